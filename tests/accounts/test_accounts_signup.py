import re

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.urls import reverse

from accounts.adapter import promote_bootstrap_admin
from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


def signup(client, email, full_name="Jane Roe", title=""):
    return client.post(
        reverse("account_signup"),
        {"email": email, "password1": PASSWORD, "password2": PASSWORD, "full_name": full_name, "title": title},
    )


def confirm_email(client, message):
    """Open the confirmation link of an allauth e-mail and press its Confirm button."""
    path = re.search(r"https?://[^/]+(/accounts/confirm-email/\S+)", message.body).group(1)
    return client.post(path)


def test_signup_with_the_bootstrap_admin_email_becomes_superuser_and_admin_once_confirmed(client, django_user_model,
                                                                                          settings):
    settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = "first@lab.example"
    response = signup(client, "First@Lab.Example")
    assert response.status_code == 302
    user = django_user_model.objects.get()
    assert user.email == "first@lab.example"
    assert not user.is_superuser  # typing the address proves nothing yet
    assert confirm_email(client, mail.outbox[-1]).status_code == 302
    user.refresh_from_db()
    assert user.is_superuser and user.is_staff
    assert list(user.groups.values_list("name", flat=True)) == ["Admin"]
    # ... and lands on the case list, not the waiting page
    assert client.get(reverse("home")).url == reverse("diagnosis:case_list")


def test_in_development_mode_the_first_signup_on_an_empty_database_becomes_admin(client, django_user_model, settings):
    """`make run` (DEBUG, 127.0.0.1) with nothing configured: the one who installed it signs up first."""
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = True, ""
    signup(client, "dev@lab.example")
    assert django_user_model.objects.get().is_superuser
    client.logout()
    signup(client, "second@lab.example")
    assert not django_user_model.objects.get(email="second@lab.example").is_superuser


@pytest.mark.parametrize("debug,bootstrap_email", [(False, ""), (False, "admin@lab.example"), (True, "admin@lab.example")])
def test_first_signup_on_an_exposed_fresh_install_gets_no_role(client, django_user_model, settings, debug,
                                                                 bootstrap_email):
    """Whoever reaches a fresh production install first must not own it."""
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = debug, bootstrap_email
    assert signup(client, "stranger@elsewhere.example").status_code == 302
    user = django_user_model.objects.get()
    assert not user.is_superuser and not user.is_staff and user.groups.count() == 0
    assert client.get(reverse("home")).url == reverse("pending_role")


def test_the_bootstrap_admin_signing_up_after_a_stranger_still_becomes_admin(client, django_user_model, settings):
    settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = " Admin@Lab.Example "
    signup(client, "stranger@elsewhere.example")
    client.logout()
    signup(client, "admin@lab.example")
    confirm_email(client, mail.outbox[-1])
    assert django_user_model.objects.get(email="admin@lab.example").is_superuser
    assert not django_user_model.objects.get(email="stranger@elsewhere.example").is_superuser


def test_a_stranger_who_signed_up_first_with_the_bootstrap_address_is_not_made_admin_by_the_owners_click(
        client, django_user_model, settings):
    """The owner, expecting the confirmation mail, opens it in their own browser (not signed in as the stranger's
    account): the address is confirmed, nobody is promoted, and the stranger's own password opens nothing."""
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = False, "boss@lab.example"
    stranger = client
    assert signup(stranger, "boss@lab.example", full_name="Lab Administrator").status_code == 302
    owner = type(client)()
    assert signup(owner, "boss@lab.example").status_code == 200  # already registered: the owner cannot sign up
    assert confirm_email(owner, mail.outbox[0]).status_code == 302
    account = django_user_model.objects.get()
    assert account.emailaddress_set.get().verified
    assert not account.is_superuser and not account.is_staff and account.groups.count() == 0
    stranger.logout()
    stranger.post(reverse("account_login"), {"login": "boss@lab.example", "password": PASSWORD})
    assert stranger.get(reverse("home")).url == reverse("pending_role")
    assert stranger.get(reverse("admin:index")).status_code == 302


@pytest.mark.parametrize("same_browser", [True, False])
def test_with_mandatory_verification_the_link_promotes_only_in_the_browser_that_signed_up(
        client, django_user_model, settings, same_browser):
    """Mandatory verification does not sign in at sign-up: the sign-up waiting in the session stands for it."""
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = False, "boss@lab.example"
    settings.ACCOUNT_EMAIL_VERIFICATION = "mandatory"
    assert signup(client, "boss@lab.example").status_code == 302
    assert "_auth_user_id" not in client.session
    confirm_email(client if same_browser else type(client)(), mail.outbox[-1])
    assert django_user_model.objects.get().is_superuser is same_browser


def test_the_stranger_confirming_another_address_of_their_own_afterwards_is_not_made_admin(
        client, django_user_model, settings):
    """Second audit round (R1): after the owner's click elsewhere verified the bootstrap address on the stranger's
    account, the stranger added an address of their own and confirmed it in their session: that promoted them."""
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = False, "boss@lab.example"
    stranger = client
    signup(stranger, "boss@lab.example", full_name="Lab Administrator")
    confirm_email(type(client)(), mail.outbox[0])  # the owner, in their own browser
    stranger.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    stranger.post(reverse("account_email"), {"action_add": "", "email": "mine@elsewhere.example"})
    confirm_email(stranger, mail.outbox[-1])
    account = django_user_model.objects.get()
    assert account.emailaddress_set.filter(email="mine@elsewhere.example", verified=True).exists()
    assert not account.is_superuser and not account.is_staff and account.groups.count() == 0


def test_the_owner_opening_the_link_signed_in_to_another_account_promotes_nobody(client, make_user,
                                                                                  django_user_model, settings):
    settings.DEBUG, settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = False, "boss@lab.example"
    signup(client, "boss@lab.example")
    other = type(client)()
    other.force_login(make_user(None, email="someone@lab.example"))
    confirm_email(other, mail.outbox[-1])
    assert not django_user_model.objects.filter(is_superuser=True).exists()


def test_later_signups_get_no_role_and_wait(client, make_user, django_user_model):
    make_user("Admin")
    response = signup(client, "second@lab.example")
    assert response.status_code == 302
    user = django_user_model.objects.get(email="second@lab.example")
    assert not user.is_superuser and not user.is_staff
    assert user.groups.count() == 0
    # Home sends them to the waiting page, which says what is going on.
    assert client.get(reverse("home")).url == reverse("pending_role")
    page = client.get(reverse("pending_role"))
    assert page.status_code == 200
    assert b"Waiting for an administrator to assign your role" in page.content
    # ... and no patient data is reachable meanwhile.
    for name in ("diagnosis:case_list", "diagnosis:patient_list", "diagnosis:case_create"):
        assert client.get(reverse(name)).url == reverse("pending_role")


def test_someone_signing_up_with_the_bootstrap_email_they_cannot_read_gets_no_role(client, django_user_model,
                                                                                  settings):
    """With e-mail verification optional, sign-up alone must not hand the install to whoever types the address."""
    settings.ACCOUNT_EMAIL_VERIFICATION = "optional"
    settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = "admin@lab.example"
    assert signup(client, "admin@lab.example").status_code == 302
    user = django_user_model.objects.get()
    assert not user.is_superuser and not user.is_staff and user.groups.count() == 0
    assert client.get(reverse("home")).url == reverse("pending_role")


def test_the_bootstrap_email_promotes_nobody_once_a_superuser_exists(make_user, settings):
    """Left set after the install, it must not hand out superuser to whoever later gets that address."""
    settings.PORTAL_BOOTSTRAP_ADMIN_EMAIL = "admin@lab.example"
    make_user("Admin", is_staff=True, is_superuser=True, email="root@lab.example")
    later = make_user(None, email="admin@lab.example")
    assert promote_bootstrap_admin(later) is False
    later.refresh_from_db()
    assert not later.is_superuser


def test_pending_page_redirects_once_a_role_is_assigned(client, no_role_user):
    client.force_login(no_role_user)
    assert client.get(reverse("pending_role")).status_code == 200
    no_role_user.groups.add(Group.objects.get(name="Pathologist"))
    assert client.get(reverse("pending_role")).url == reverse("home")


def test_pending_page_requires_login(client):
    response = client.get(reverse("pending_role"))
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


def test_login_is_by_email_and_duplicate_email_refused(client, make_user):
    make_user("Technician", email="tech@lab.example")
    response = client.post(reverse("account_login"), {"login": "TECH@lab.example", "password": PASSWORD})
    assert response.status_code == 302
    client.logout()
    response = signup(client, "tech@lab.example")
    assert response.status_code == 200  # form shown again with an error
    assert b"already" in response.content


def test_password_reset_sends_a_working_link(client, make_user):
    make_user("Technician", email="tech@lab.example")
    response = client.post(reverse("account_reset_password"), {"email": "tech@lab.example"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/]+(/accounts/password/reset/key/\S+)", mail.outbox[0].body).group(1)
    response = client.get(link, follow=True)
    assert response.status_code == 200
    assert b"password1" in response.content


def test_logout(client, technician):
    client.force_login(technician)
    response = client.post(reverse("account_logout"))
    assert response.status_code == 302
    assert client.get(reverse("diagnosis:case_list")).status_code == 302


def test_role_groups_have_the_documented_permissions():
    def perms(role):
        group = Group.objects.get(name=role)
        return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}

    tech, path, admin = perms("Technician"), perms("Pathologist"), perms("Admin")
    assert {"diagnosis.add_smear", "diagnosis.add_case", "diagnosis.add_patient", "diagnosis.retry_smear"} <= tech
    assert "diagnosis.review_case" not in tech
    assert not {p for p in tech if p.split(".")[1].startswith(("change_", "delete_"))}
    assert "diagnosis.review_case" in path
    assert not {p for p in path if p.split(".")[1].startswith(("add_", "change_", "delete_"))}
    assert tech | path <= admin
    assert "accounts.change_user" in admin


def test_the_admin_role_holds_every_diagnosis_permission_including_those_of_later_models():
    from django.contrib.auth.models import Permission

    every = {f"diagnosis.{codename}" for codename in
             Permission.objects.filter(content_type__app_label="diagnosis").values_list("codename", flat=True)}
    admin = {f"diagnosis.{codename}" for codename in
             Group.objects.get(name="Admin").permissions.filter(content_type__app_label="diagnosis")
             .values_list("codename", flat=True)}
    assert every - admin == set()  # e.g. the exports and notifications added after the roles were made


def test_a_staff_admin_sees_the_exports_record_in_the_django_admin(client, lab_admin):
    client.force_login(lab_admin)
    assert client.get(reverse("admin:diagnosis_reviewedexport_changelist")).status_code == 200


def test_an_address_the_database_takes_for_an_existing_one_is_refused_not_a_server_error(client, make_user,
                                                                                         django_user_model):
    """MariaDB's collation compares without accents: "tech@läb" was a duplicate of "tech@lab" there (a 500 at
    sign-up, second audit round R11); SQLite compares bytes and keeps both."""
    from django.db import connection

    make_user("Technician", email="tech@lab.example")
    response = signup(client, "tech@läb.example")  # an accent in the domain passes the address check
    if connection.vendor == "mysql":
        assert response.status_code == 200 and "already registered" in response.content.decode()
        assert django_user_model.objects.count() == 1
    else:
        assert response.status_code == 302 and django_user_model.objects.count() == 2
