"""An account an administrator or the command line makes has its address vouched for: allauth's record of it is
confirmed and primary from the start (second audit round, R2-R4). Before, the account had no record, and the first
allauth flow it met made an unconfirmed one: an anonymous password-reset request then refused it two-factor set-up
(the portal's only page for a new pathologist or admin) and made the admin refuse it a role; and an address another
account had typed before this one existed could be confirmed for that other account."""
import re
from importlib import import_module

import pytest
from allauth.account.models import EmailAddress
from django.apps import apps as current_apps
from django.contrib.auth.models import Group
from django.core import mail
from django.core.management import call_command
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


def test_createsuperuser_and_create_user_accounts_have_their_address_confirmed(django_user_model, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command("createsuperuser", "--noinput", "--email", "root@lab.example", verbosity=0)
    made = django_user_model.objects.create_user(email="made@lab.example", password=PASSWORD)
    for user in (django_user_model.objects.get(email="root@lab.example"), made):
        assert list(user.emailaddress_set.values_list("email", "verified", "primary")) == [(user.email, True, True)]


@pytest.mark.mfa
def test_an_anonymous_reset_request_no_longer_blocks_two_factor_set_up_or_the_role(client, make_user):
    pathologist = make_user(None, email="new.pathologist@lab.example")
    client.post(reverse("account_reset_password"), {"email": pathologist.email})  # anyone can ask
    assert pathologist.emailaddress_set.get().verified
    pathologist.groups.add(Group.objects.get(name="Pathologist"))
    client.post(reverse("account_login"), {"login": pathologist.email, "password": PASSWORD})
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200 and "form" in page.context  # not "verify your email address first"


def test_an_account_added_in_the_admin_takes_a_role_at_once(client, make_user, django_user_model):
    client.force_login(make_user("Admin", is_staff=True))
    client.post(reverse("admin:accounts_user_add"), {"email": "ana@lab.example", "full_name": "Ana Novak"})
    ana = django_user_model.objects.get(email="ana@lab.example")
    from tests.accounts.test_security_accounts import user_form

    response = client.post(reverse("admin:accounts_user_change", args=[ana.pk]),
                           user_form(ana, groups=[Group.objects.get(name="Pathologist").pk]))
    assert response.status_code == 302
    assert ana.groups.filter(name="Pathologist").exists()


def test_an_address_typed_by_another_account_before_this_one_existed_cannot_be_confirmed_for_it(
        client, make_user, no_role_user, django_user_model):
    attacker = client
    attacker.post(reverse("account_login"), {"login": no_role_user.email, "password": PASSWORD})
    attacker.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    mail.outbox.clear()
    attacker.post(reverse("account_email"), {"action_add": "", "email": "newhire@lab.example"})
    squatted_link = re.search(r"https?://[^/]+(/accounts/confirm-email/\S+)", mail.outbox[-1].body).group(1)
    newhire = make_user("Technician", email="newhire@lab.example")  # the administrator opens the account
    assert not EmailAddress.objects.filter(user=no_role_user, email="newhire@lab.example").exists()
    newcomer = type(client)()
    newcomer.post(squatted_link)  # the newcomer presses Confirm on the mail the attacker caused
    assert not EmailAddress.objects.filter(user=no_role_user, email="newhire@lab.example").exists()
    mail.outbox.clear()
    type(client)().post(reverse("account_reset_password"), {"email": "newhire@lab.example"})
    from allauth.account.utils import user_pk_to_url_str

    assert len(mail.outbox) == 1 and f"/key/{user_pk_to_url_str(newhire)}-" in mail.outbox[0].body


def test_the_migration_vouches_for_accounts_made_before_and_leaves_signed_up_ones(make_user):
    legacy = make_user(None, email="legacy@lab.example")
    legacy.emailaddress_set.all().delete()  # as accounts made before vouch_for_address
    signed_up = make_user(None, email="signed.up@lab.example")
    signed_up.emailaddress_set.update(verified=False)
    import_module("accounts.migrations.0009_vouch_for_admin_made_addresses").vouch(current_apps, None)
    assert list(legacy.emailaddress_set.values_list("verified", "primary")) == [(True, True)]
    assert list(signed_up.emailaddress_set.values_list("verified", flat=True)) == [False]


def test_an_address_typed_with_capitals_in_the_admin_gives_one_confirmed_record(client, make_user, django_user_model):
    """Third audit round: "Ana.Lopez@Lab.Example" got a confirmed record and, from allauth's exact lookup, an
    unconfirmed lower-case copy that refused two-factor set-up."""
    client.force_login(make_user("Admin", is_staff=True))
    client.post(reverse("admin:accounts_user_add"), {"email": "Ana.Lopez@Lab.Example", "full_name": "Ana Lopez"})
    ana = django_user_model.objects.get(full_name="Ana Lopez")
    assert ana.email == "ana.lopez@lab.example"
    client.post(reverse("account_reset_password"), {"email": "Ana.Lopez@Lab.Example"})
    assert list(ana.emailaddress_set.values_list("email", "verified", "primary")) == [
        ("ana.lopez@lab.example", True, True)]


def test_an_address_an_admin_changes_is_vouched_for_and_squatters_lose_it(client, make_user, no_role_user):
    """Third audit round: vouching only at creation left an address changed in the admin unconfirmed (R2 again)
    and let a squatter's earlier unconfirmed record of it be confirmed for the squatter (R4 again)."""
    EmailAddress.objects.create(user=no_role_user, email="new.address@lab.example", verified=False, primary=False)
    member = make_user("Technician", email="old.address@lab.example")
    client.force_login(make_user("Admin", is_staff=True))
    from tests.accounts.test_security_accounts import user_form

    response = client.post(reverse("admin:accounts_user_change", args=[member.pk]),
                           user_form(member, email="New.Address@Lab.Example"))
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.email == "new.address@lab.example"
    assert member.emailaddress_set.get(primary=True).email == "new.address@lab.example"
    assert member.emailaddress_set.get(primary=True).verified
    assert not EmailAddress.objects.filter(user=no_role_user, email="new.address@lab.example").exists()
