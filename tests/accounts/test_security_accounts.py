"""Issue 13 on the account side, through the real views: privilege
escalation in the admin, admin login through allauth with its rate limits,
MFA required by role, the idle session timeout, no-store on patient pages and
the Content-Security-Policy header."""
import re

import pytest
from django.test import Client
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = pytest.mark.django_db


# --- Privilege escalation in the admin -----------------------------------------
@pytest.fixture
def staff_admin(make_user):
    """A lab Admin with staff status who is not superuser."""
    return make_user("Admin", is_staff=True)


def user_form(user, **changes):
    data = {"email": user.email, "first_name": user.first_name, "last_name": user.last_name, "is_active": "on",
            "groups": [g.pk for g in user.groups.all()], "last_login_0": "", "last_login_1": "",
            "date_joined_0": user.date_joined.strftime("%Y-%m-%d"), "date_joined_1": user.date_joined.strftime("%H:%M:%S")}
    data.update(changes)
    return data


def test_staff_admin_cannot_make_themself_superuser(client, staff_admin):
    client.force_login(staff_admin)
    url = reverse("admin:accounts_user_change", args=[staff_admin.pk])
    response = client.post(url, user_form(staff_admin, is_superuser="on", is_staff="on"))
    assert response.status_code == 302
    staff_admin.refresh_from_db()
    assert not staff_admin.is_superuser


def test_staff_admin_cannot_grant_staff_status(client, staff_admin, make_user):
    other = make_user("Technician")
    client.force_login(staff_admin)
    client.post(reverse("admin:accounts_user_change", args=[other.pk]), user_form(other, is_staff="on"))
    other.refresh_from_db()
    assert not other.is_staff


def test_staff_admin_cannot_change_a_superusers_password_or_account(client, staff_admin, make_user):
    root = make_user("Admin", is_staff=True, is_superuser=True)
    client.force_login(staff_admin)
    password_url = reverse("admin:auth_user_password_change", args=[root.pk])
    assert client.get(password_url).status_code == 403
    assert client.post(password_url, {"password1": "x-new-pass-123", "password2": "x-new-pass-123"}).status_code == 403
    response = client.post(reverse("admin:accounts_user_change", args=[root.pk]), user_form(root, email="mine@lab.example"))
    assert response.status_code == 403
    root.refresh_from_db()
    assert root.email != "mine@lab.example" and root.check_password(PASSWORD)


def test_superuser_can_still_grant_staff(client, make_user):
    root = make_user("Admin", is_staff=True, is_superuser=True)
    other = make_user("Admin")
    client.force_login(root)
    client.post(reverse("admin:accounts_user_change", args=[other.pk]), user_form(other, is_staff="on"))
    other.refresh_from_db()
    assert other.is_staff


# --- A role only for an address its owner confirmed ------------------------------
@pytest.fixture
def self_signed_up(make_user):
    """An account as sign-up leaves it with verification optional: its address recorded, not confirmed."""
    from allauth.account.models import EmailAddress

    user = make_user(email="pathologist.jones@lab.example")
    EmailAddress.objects.update_or_create(user=user, email=user.email,
                                          defaults={"primary": True, "verified": False})
    return user


def pathologist_group():
    from django.contrib.auth.models import Group

    return Group.objects.get(name="Pathologist")


def test_admin_cannot_give_a_role_to_a_self_signed_up_account_whose_address_is_unconfirmed(client, staff_admin,
                                                                                          self_signed_up):
    client.force_login(staff_admin)
    url = reverse("admin:accounts_user_change", args=[self_signed_up.pk])
    response = client.post(url, user_form(self_signed_up, groups=[pathologist_group().pk]))
    assert response.status_code == 200
    assert "is not confirmed yet" in response.content.decode()
    assert not self_signed_up.groups.exists()


def test_the_role_is_given_once_the_address_is_confirmed(client, staff_admin, self_signed_up):
    self_signed_up.emailaddress_set.update(verified=True)
    client.force_login(staff_admin)
    url = reverse("admin:accounts_user_change", args=[self_signed_up.pk])
    assert client.post(url, user_form(self_signed_up, groups=[pathologist_group().pk])).status_code == 302
    assert list(self_signed_up.groups.all()) == [pathologist_group()]


def test_accounts_an_admin_created_take_a_role_and_the_list_says_which_addresses_are_confirmed(client, staff_admin,
                                                                                               make_user,
                                                                                               self_signed_up):
    created = make_user(email="made.here@lab.example")
    client.force_login(staff_admin)
    url = reverse("admin:accounts_user_change", args=[created.pk])
    assert client.post(url, user_form(created, groups=[pathologist_group().pk])).status_code == 302
    assert created.groups.filter(name="Pathologist").exists()
    listing = client.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert "email confirmed" in listing.lower() and ">NO<" in listing  # the self-signed-up one
    assert created.emailaddress_set.get().verified  # the admin vouched for the address it typed


def test_an_unconfirmed_account_that_already_has_a_role_can_still_be_edited(client, staff_admin, self_signed_up):
    self_signed_up.groups.add(pathologist_group())
    client.force_login(staff_admin)
    url = reverse("admin:accounts_user_change", args=[self_signed_up.pk])
    response = client.post(url, user_form(self_signed_up, first_name="Ann"))
    assert response.status_code == 302


# --- The address shown as a user's is one its owner confirmed -------------------
# Audit trails, signed reports, exports and notifications show or use user.email, which allauth sets to the
# primary address. An address typed on the e-mail page proves nothing until its confirmation link is opened.
def sign_in_for_account_changes(client, user):
    """Sign in, and give the password again as the e-mail page asks (allauth's reauthentication)."""
    assert login(client, user.email, PASSWORD).status_code == 302
    assert client.post(reverse("account_reauthenticate"), {"password": PASSWORD}).status_code == 302


def add_address(client, email):
    return client.post(reverse("account_email"), {"action_add": "", "email": email})


def make_primary(client, email):
    return client.post(reverse("account_email"), {"action_primary": "", "email": email}, follow=True)


@pytest.mark.parametrize("own_address", ["created by an admin", "confirmed at sign-up", "not confirmed"])
def test_a_signed_in_user_cannot_make_an_unconfirmed_address_the_one_shown_as_theirs(client, make_user, own_address):
    from allauth.account.models import EmailAddress

    user = make_user("Pathologist", email="dr.ross@lab.example")
    if own_address != "created by an admin":
        EmailAddress.objects.update_or_create(user=user, email=user.email, defaults={
            "primary": True, "verified": own_address == "confirmed at sign-up"})
    sign_in_for_account_changes(client, user)
    assert add_address(client, "chief.pathologist@lab.example").status_code == 302
    response = make_primary(client, "chief.pathologist@lab.example")
    user.refresh_from_db()
    assert user.email == "dr.ross@lab.example"
    assert "must be verified" in response.content.decode()
    assert not EmailAddress.objects.filter(email="chief.pathologist@lab.example", primary=True).exists()


@pytest.mark.parametrize("own_address", ["created by an admin", "not confirmed"])
def test_removing_ones_own_address_never_leaves_an_unconfirmed_one_shown_as_theirs(client, make_user, own_address):
    from allauth.account.models import EmailAddress

    user = make_user("Pathologist", email="dr.ross@lab.example")
    if own_address == "not confirmed":
        EmailAddress.objects.update_or_create(user=user, email=user.email,
                                          defaults={"primary": True, "verified": False})
    sign_in_for_account_changes(client, user)
    add_address(client, "chief.pathologist@lab.example")
    client.post(reverse("account_email"), {"action_remove": "", "email": "dr.ross@lab.example"})
    user.refresh_from_db()
    assert user.email == "dr.ross@lab.example"


def test_an_address_becomes_the_users_once_its_confirmation_link_was_opened(client, make_user):
    from django.core import mail

    user = make_user("Pathologist", email="dr.ross@lab.example")
    sign_in_for_account_changes(client, user)
    add_address(client, "d.ross@lab.example")
    path = re.search(r"https?://[^/]+(/accounts/confirm-email/\S+)", mail.outbox[-1].body).group(1)
    assert client.post(path).status_code == 302
    make_primary(client, "d.ross@lab.example")
    user.refresh_from_db()
    assert user.email == "d.ross@lab.example"


# --- Admin login goes through allauth (rate limits, MFA) ------------------------
def test_admin_login_page_sends_to_the_portal_login(client):
    response = client.get(reverse("admin:login"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login")) and "next=" in response.url


def test_admin_login_form_post_signs_nobody_in(client, make_user):
    root = make_user("Admin", is_staff=True, is_superuser=True)
    client.post(reverse("admin:login"), {"username": root.email, "password": PASSWORD})
    assert "_auth_user_id" not in client.session


def login(client, email, password):
    return client.post(reverse("account_login"), {"login": email, "password": password})


def test_password_guessing_is_throttled_per_account_without_locking_out_colleagues(make_user):
    target, colleague = make_user("Admin", is_staff=True), make_user("Pathologist")
    attacker = Client(REMOTE_ADDR="10.0.0.7")
    for _ in range(30):
        login(attacker, target.email, "wrong-password")
    response = login(attacker, target.email, PASSWORD)  # the right one, after 30 wrong
    assert "_auth_user_id" not in attacker.session
    assert response.status_code in (200, 429)
    same_office = Client(REMOTE_ADDR="10.0.0.7")  # a colleague behind the same NAT address
    assert login(same_office, colleague.email, PASSWORD).status_code == 302
    assert same_office.session["_auth_user_id"] == str(colleague.pk)


def test_rate_limits_use_the_shared_cache_named_by_cache_url():
    import subprocess
    import sys

    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.CACHES['default']['BACKEND'])")
    env = {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/5", "PATH": "/usr/bin:/bin", "DEBUG": "1",
           "DJANGO_SETTINGS_MODULE": "leukportal.settings"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "django.core.cache.backends.redis.RedisCache"


# --- MFA required by role --------------------------------------------------------
def current_totp(secret):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    return format_hotp_value(hotp_value(secret, next(yield_hotp_counters_from_time())))


@pytest.mark.mfa
def test_pathologist_must_set_up_totp_then_signs_in_with_a_code(client, pathologist):
    assert login(client, pathologist.email, PASSWORD).status_code == 302
    response = client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 302 and response.url == reverse("mfa_activate_totp")
    assert client.get(reverse("admin:index")).url == reverse("mfa_activate_totp")
    # Setting up an authenticator asks for the password again (allauth's reauthentication).
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200
    secret = page.context["form"].secret
    response = client.post(reverse("mfa_activate_totp"), {"code": current_totp(secret)})
    assert response.status_code == 302
    assert client.get(reverse("diagnosis:case_list")).status_code == 200

    client.post(reverse("account_logout"))
    response = login(client, pathologist.email, PASSWORD)
    assert response.status_code == 302 and response.url == reverse("mfa_authenticate")
    assert "_auth_user_id" not in client.session  # the password alone is not enough
    from allauth.mfa.models import Authenticator

    totp = Authenticator.objects.get(user=pathologist, type=Authenticator.Type.TOTP)
    stored_secret = totp.wrap().instance.data["secret"]
    from allauth.mfa.utils import decrypt

    client.post(reverse("mfa_authenticate"), {"code": current_totp(decrypt(stored_secret))})
    assert client.session["_auth_user_id"] == str(pathologist.pk)


@pytest.mark.mfa
@pytest.mark.parametrize("role,required", [("Technician", False), ("Pathologist", True), ("Admin", True)])
def test_mfa_is_required_for_the_configured_roles_only(client, make_user, role, required):
    client.force_login(make_user(role))
    response = client.get(reverse("diagnosis:case_list"))
    assert (response.status_code == 302 and response.url == reverse("mfa_activate_totp")) is required
    assert response.status_code == (302 if required else 200)


@pytest.mark.mfa
def test_mfa_requirement_is_configurable(client, pathologist, settings):
    settings.MFA_REQUIRED_ROLES = []
    client.force_login(pathologist)
    assert client.get(reverse("diagnosis:case_list")).status_code == 200


# --- Idle timeout, caching, CSP ----------------------------------------------------
def test_idle_session_is_signed_out(client, pathologist, settings, monkeypatch):
    import time

    settings.SESSION_IDLE_TIMEOUT_SECONDS = 1800
    client.force_login(pathologist)
    assert client.get(reverse("diagnosis:case_list")).status_code == 200
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 1700)
    assert client.get(reverse("diagnosis:case_list")).status_code == 200  # still active: the clock restarts
    monkeypatch.setattr(time, "time", lambda: now + 1700 + 1801)
    response = client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))
    assert "_auth_user_id" not in client.session


def test_status_polling_does_not_keep_an_idle_session_alive(client, pathologist, case, settings, monkeypatch):
    import time

    settings.SESSION_IDLE_TIMEOUT_SECONDS = 60
    client.force_login(pathologist)
    client.get(reverse("diagnosis:case_detail", args=[case.pk]))
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 40)
    assert client.get(reverse("diagnosis:case_status", args=[case.pk])).status_code == 200
    monkeypatch.setattr(time, "time", lambda: now + 80)  # 80 s after the last page view, 40 s after the poll
    assert client.get(reverse("diagnosis:case_status", args=[case.pk])).status_code == 401
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("name,key", [("diagnosis:case_list", None), ("diagnosis:case_detail", "case"),
                                      ("diagnosis:patient_detail", "patient"), ("diagnosis:case_report", "case")])
def test_patient_pages_are_never_cached(client, pathologist, case, name, key):
    client.force_login(pathologist)
    response = client.get(reverse(name, args=[{"case": case, "patient": case.patient}[key].pk] if key else []))
    assert "no-store" in response["Cache-Control"]


def test_every_page_carries_a_content_security_policy_without_inline_script(client, pathologist, case):
    client.force_login(pathologist)
    response = client.get(reverse("diagnosis:case_detail", args=[case.pk]))
    policy = response["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in policy
    assert "Content-Security-Policy" in Client().get(reverse("account_login"))


def test_templates_have_no_inline_script_or_event_handler():
    from pathlib import Path

    for template in (Path(__file__).resolve().parents[2] / "templates").rglob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template
        assert not re.search(r"\son[a-z]+\s*=", text), template
        assert "javascript:" not in text, template


def test_technician_may_set_up_mfa_optionally(client, technician):
    client.force_login(technician)
    assert 'href="/accounts/2fa/"' in client.get(reverse("diagnosis:case_list")).content.decode()
    assert client.get(reverse("mfa_index")).status_code == 200
