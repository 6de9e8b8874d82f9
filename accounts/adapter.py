from allauth.account.adapter import DefaultAccountAdapter
from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from . import roles


def normalise_email(email):
    return (email or "").strip().lower()


def folded_email(email):
    """The address as an accent- and case-insensitive database collation (MariaDB's utf8mb4_unicode_ci) compares
    it: "tech@a.tëst" signs in to "tech@a.test" there, so it must count against the same failed-login limit."""
    import unicodedata

    decomposed = unicodedata.normalize("NFKD", normalise_email(email))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        user._signed_up = True  # vouch_for_address: a typed address proves nothing until its link is opened
        user = super().save_user(request, user, form, commit=commit)
        if commit:
            promote_bootstrap_admin(user)
        return user

    def _get_login_attempts_cache_key(self, request, **credentials):
        # allauth's key starts with the request's site domain, i.e. its Host header: every spelling
        # Django accepts (`portal:1`, `PORTAL`, `portal.`) would get five fresh guesses. One account, one count.
        return folded_email(credentials.get("email") or credentials.get("username"))


@transaction.atomic
def promote_bootstrap_admin(user):
    """Make the installation's first administrator (superuser and Admin), so a
    fresh install needs no default password:
    * with PORTAL_BOOTSTRAP_ADMIN_EMAIL set, the account with that address,
      once the address is verified (its confirmation link, opened signed in
      as that account: promote_on_confirmation; whoever merely types the
      address at sign-up gets nothing), while there is no superuser;
    * without it, only in development mode (DEBUG; `make run` listens on
      127.0.0.1), the first account on an empty database.
    Every other account starts without a role until an administrator assigns
    one: whoever reaches an exposed production install first must not own it."""
    wanted = normalise_email(settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL)
    User = type(user)
    if wanted:
        if normalise_email(user.email) != wanted:
            return False
        if not EmailAddress.objects.filter(user=user, email__iexact=wanted, verified=True).exists():
            return False
        if User.objects.filter(is_superuser=True).exclude(pk=user.pk).exists():
            return False
    elif not settings.DEBUG or User.objects.exclude(pk=user.pk).exists():
        return False
    user.is_superuser = True
    user.is_staff = True
    user.save(update_fields=["is_superuser", "is_staff"])
    user.groups.add(Group.objects.get(name=roles.ADMIN))
    return True


def promote_on_confirmation(sender, request, email_address, **kwargs):
    """allauth's email_confirmed signal: the bootstrap address just proved its owner, if this confirmation is of
    the bootstrap address itself and its link is opened in a session signed in as the account that holds it, so
    that one person both chose its password and reads the mailbox (confirming another address of an account that
    holds the bootstrap address proves nothing about that mailbox). A link opened anywhere else confirms the
    address but promotes nobody: otherwise a stranger who signed up first with the bootstrap address, with a
    password of their own, would own the install as soon as the real owner, expecting exactly this mail, pressed
    Confirm."""
    wanted = normalise_email(settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL)
    if (wanted and normalise_email(email_address.email) == wanted and request is not None
            and _signed_up_or_in_here(request, email_address.user_id)):
        promote_bootstrap_admin(email_address.user)


def _signed_up_or_in_here(request, user_id):
    """The request's session is signed in as ``user_id``, or (ACCOUNT_EMAIL_VERIFICATION "mandatory", where
    sign-up does not sign in) holds that account's sign-up waiting for this very confirmation. The second reads
    allauth's stashed login (an internal of allauth 65, pinned in requirements; tests/accounts cover both)."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user.pk == user_id
    from allauth.account.internal.stagekit import unstash_login

    pending = unstash_login(request, peek=True)
    return bool(pending and pending.signup and pending.user is not None and pending.user.pk == user_id)


def vouch_for_address(sender, instance, created, **kwargs):
    """post_save of a new User not made by sign-up (the admin's Add user, createsuperuser, the shell): whoever
    made it vouches for its address, which gets allauth's record as confirmed and primary at once. Without it,
    allauth made an unconfirmed record the first time the account met an allauth flow (an anonymous password-reset
    request, a visit to the e-mail page), which then refused the account two-factor set-up and a role, and let an
    address another account had typed before this one existed (an unconfirmed record) be confirmed for that other
    account; such records of other accounts are removed here."""
    if not created or kwargs.get("raw") or getattr(instance, "_signed_up", False) or not instance.email:
        return  # raw: loaddata (a restore) brings the account's own address records
    vouch_for(instance)


def vouch_for_unrecorded_addresses():
    """Migration accounts.0009's rule for rows that come from before it (a restored older backup, which the
    migration never saw): each account with an address but no allauth record gets it as confirmed and primary,
    unless another account holds it confirmed (left for an administrator). Returns how many were recorded."""
    User = get_user_model()
    recorded = 0
    for user in User.objects.filter(emailaddress__isnull=True).exclude(email=""):
        if EmailAddress.objects.filter(email__iexact=user.email, verified=True).exists():
            continue
        EmailAddress.objects.filter(email__iexact=user.email, verified=False).delete()
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
        recorded += 1
    return recorded


def vouch_for(user):
    """Record ``user.email`` as the account's confirmed, primary address (an administrator typed it: at creation,
    or by changing it in the admin), and remove other accounts' unconfirmed records of it."""
    EmailAddress.objects.filter(email__iexact=user.email, verified=False).exclude(user=user).delete()
    EmailAddress.objects.filter(user=user, primary=True).exclude(email__iexact=user.email).update(primary=False)
    address = EmailAddress.objects.filter(user=user, email__iexact=user.email).first()
    if address is None:
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    elif not (address.verified and address.primary):
        address.verified = address.primary = True
        address.save(update_fields=["verified", "primary"])
