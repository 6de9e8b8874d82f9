from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm as BaseUserChangeForm
from django.core.exceptions import ValidationError
from django.utils.translation import gettext_lazy as _

from leukportal.admin import BoundedSearchMixin

from .models import User


def address_confirmed(user) -> bool | None:
    """Whether the account's address was confirmed through its e-mailed link; None for an account an admin
    created here (allauth keeps no address record for it: the admin vouches for it). Anyone can sign up as a
    colleague's address, and only the confirmation link shows who reads that mailbox. Reads
    ``user.emailaddress_set``, so a prefetched list serves the whole user list."""
    addresses = list(user.emailaddress_set.all())
    if not addresses:
        return None
    return any(a.verified and a.email.lower() == user.email.lower() for a in addresses)


class UserChangeForm(BaseUserChangeForm):
    def clean_email(self):
        # Lower case, as the account manager and allauth store addresses: allauth looks records up by the exact
        # address, and a capitalised one got an unconfirmed lower-case copy that refused two-factor set-up.
        return self.cleaned_data["email"].strip().lower()

    def clean_groups(self):
        groups = self.cleaned_data.get("groups")
        if self.instance.pk and groups is not None:
            added = set(groups) - set(self.instance.groups.all())
            if added and address_confirmed(self.instance) is False:
                raise ValidationError(
                    "This account signed itself up and %(email)s is not confirmed yet: a role is given only once "
                    "its owner has clicked the confirmation link we e-mailed (or, after checking the address with "
                    "its owner, once it is marked verified under Email addresses).",
                    params={"email": self.instance.email}, code="unconfirmed_email")
        return groups


class InviteUserForm(forms.ModelForm):
    """A new account gets no password from the admin: it is created without one and its owner chooses it from
    an e-mailed link (send_invitation). An administrator who set it would know a pathologist's password and, since
    two-factor sign-in is set up at the first sign-in, could set up their own authenticator on that account."""

    class Meta:
        model = User
        fields = ("email", "full_name", "title")

    def clean_email(self):
        return self.cleaned_data["email"].strip().lower()  # as UserChangeForm.clean_email

    def save(self, commit=True):
        user = super().save(commit=False)
        user.set_unusable_password()
        if commit:
            user.save()
        return user


def send_invitation(request, user):
    """Mail ``user`` a link to choose a password: allauth's password-reset key (Django's token: valid for
    PASSWORD_RESET_TIMEOUT, once, and void as soon as a password is set)."""
    from allauth.account.adapter import get_adapter
    from allauth.account.forms import default_token_generator
    from allauth.account.utils import user_pk_to_url_str

    adapter = get_adapter(request)
    key = f"{user_pk_to_url_str(user)}-{default_token_generator.make_token(user)}"
    url = adapter.get_reset_password_from_key_url(key)
    adapter.send_mail("account/email/invitation", user.email, {"user": user, "set_password_url": url})


@admin.register(User)
class UserAdmin(BoundedSearchMixin, BaseUserAdmin):
    form = UserChangeForm
    add_form = InviteUserForm
    actions = ["invite_again"]
    ordering = ["email"]
    list_display = ["email", "email_confirmed", "full_name", "title", "role_list", "is_active", "is_staff",
                    "last_login", "date_joined"]
    list_filter = ["groups", "is_active", "is_staff", "is_superuser"]
    search_fields = ["email", "full_name", "first_name", "last_name"]
    readonly_fields = ["last_login", "date_joined"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (_("Personal info"), {"fields": ("full_name", "title")}),
        (
            _("Role and permissions"),
            {
                "fields": ("is_active", "groups", "is_staff", "is_superuser", "user_permissions"),
                "description": "Assign exactly one role group (Technician, Pathologist or Admin). "
                "Admins also need “Staff status” to open this admin site. A role is refused to an account that "
                "signed itself up until its e-mail address is confirmed.",
            },
        ),
        (_("Important dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "full_name", "title"),
                             "description": "The account is created without a password: its owner gets an e-mail "
                                            "with a link to choose one. Give the role on the next page."}),)

    #: Only a superuser may grant these (to anyone, themselves included).
    PRIVILEGE_FIELDS = ("is_staff", "is_superuser", "user_permissions")

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += [f for f in self.PRIVILEGE_FIELDS if f not in fields]
        return fields

    def has_change_permission(self, request, obj=None):
        # A staff Admin who is not superuser must not change a superuser
        # (their email, password or groups): that would take the account over.
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.is_superuser and not request.user.is_superuser:
            return False
        return super().has_delete_permission(request, obj)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups", "emailaddress_set")

    @admin.display(description="email confirmed")
    def email_confirmed(self, obj):
        return {None: "created by an admin", True: "yes", False: "NO"}[address_confirmed(obj)]

    @admin.display(description="roles")
    def role_list(self, obj):
        return ", ".join(g.name for g in obj.groups.all()) or "— (waiting for a role)"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "email" in form.changed_data:
            from .adapter import vouch_for

            vouch_for(obj)  # the administrator vouches for the address typed here, as at creation
        if not change:
            send_invitation(request, obj)
            self.message_user(request, f"An e-mail with a link to choose a password was sent to {obj.email}.")

    @admin.action(description="Send the selected accounts without a password a new link to choose one")
    def invite_again(self, request, queryset):
        waiting = [user for user in queryset if not user.has_usable_password() and user.is_active]
        for user in waiting:
            send_invitation(request, user)
        skipped = queryset.count() - len(waiting)
        self.message_user(request, f"Sent {len(waiting)} link(s)." + (
            f" {skipped} account(s) skipped: they have a password already (they can reset it themselves) or are "
            "inactive." if skipped else ""), messages.SUCCESS if waiting else messages.WARNING)
