"""MFA required by role: a pathologist who has just signed in with the password is sent to set up an authenticator
app and gets the TOTP form at once; allauth (65.x) counts only an explicit reauthentication as recent, so without
accounts.adapter it asked for the password again straight after the sign-in. Only that first set-up is let through:
a sign-in older than ACCOUNT_REAUTHENTICATION_TIMEOUT, any other sensitive change (e-mail), and any change to an
authenticator that exists already still ask for the password again."""
import pytest
from allauth.account import app_settings as account_settings
from allauth.account.authentication import AUTHENTICATION_METHODS_SESSION_KEY
from django.urls import reverse

from tests.portal_testutils import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.mfa]


def sign_in(client, user):
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302 and "_auth_user_id" in client.session
    return response


def age_the_sign_in(client, seconds):
    """Move every authentication the session recorded `seconds` into the past."""
    session = client.session
    records = session[AUTHENTICATION_METHODS_SESSION_KEY]
    assert records and records[-1]["method"] == "password"
    session[AUTHENTICATION_METHODS_SESSION_KEY] = [{**r, "at": r["at"] - seconds} for r in records]
    session.save()


def current_totp(secret):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    return format_hotp_value(hotp_value(secret, next(yield_hotp_counters_from_time())))


def test_a_pathologist_who_just_signed_in_gets_the_totp_form_without_giving_the_password_again(client, pathologist):
    sign_in(client, pathologist)
    response = client.get(reverse("diagnosis:case_list"))
    assert response.status_code == 302 and response.url == reverse("mfa_activate_totp")
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200, page.get("Location")  # not a redirect to account_reauthenticate
    response = client.post(reverse("mfa_activate_totp"), {"code": current_totp(page.context["form"].secret)})
    assert response.status_code == 302 and not response.url.startswith(reverse("account_reauthenticate"))
    assert client.get(reverse("diagnosis:case_list")).status_code == 200
    # Once an authenticator exists, changing it asks for the password again, however recent the sign-in.
    for name in ("mfa_deactivate_totp", "mfa_generate_recovery_codes"):
        response = client.get(reverse(name))
        assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate")), name


def test_a_sign_in_older_than_the_reauthentication_timeout_asks_for_the_password_again(client, pathologist):
    sign_in(client, pathologist)
    age_the_sign_in(client, account_settings.REAUTHENTICATION_TIMEOUT + 1)
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
    assert client.post(reverse("account_reauthenticate"), {"password": PASSWORD}).status_code == 302
    assert client.get(reverse("mfa_activate_totp")).status_code == 200


def test_a_sign_in_just_inside_the_timeout_still_counts(client, pathologist):
    sign_in(client, pathologist)
    age_the_sign_in(client, account_settings.REAUTHENTICATION_TIMEOUT - 30)
    assert client.get(reverse("mfa_activate_totp")).status_code == 200


def test_other_sensitive_changes_ask_for_the_password_again_after_the_timeout(client, technician):
    sign_in(client, technician)
    age_the_sign_in(client, account_settings.REAUTHENTICATION_TIMEOUT + 1)
    response = client.post(reverse("account_email"), {"action_add": "", "email": "second@lab.example"})
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
    from allauth.account.models import EmailAddress

    assert not EmailAddress.objects.filter(email="second@lab.example").exists()


def test_changing_the_email_right_after_signing_in_still_asks_for_the_password(client, technician):
    sign_in(client, technician)
    response = client.post(reverse("account_email"), {"action_add": "", "email": "second@lab.example"})
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))


def test_a_session_without_a_recorded_sign_in_is_asked_for_the_password(client, pathologist):
    client.force_login(pathologist)  # no authentication recorded in the session (e.g. an old session)
    response = client.get(reverse("mfa_activate_totp"))
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
