"""Two-factor secrets are stored encrypted (security review F8): a copy of the database or a backup no longer hands
over every TOTP key with the password hashes. Sign-in with a code works as before; a secret stored in the clear
before still works; rotating SECRET_KEY the Django way (SECRET_KEY_FALLBACKS) keeps every authenticator."""
import pytest
from allauth.mfa.models import Authenticator
from django.urls import reverse

from accounts.mfa_adapter import PREFIX, decrypt_secret, encrypt_secret
from tests.portal_testutils import PASSWORD

pytestmark = [pytest.mark.django_db, pytest.mark.mfa]


def current_totp(secret):
    from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time

    return format_hotp_value(hotp_value(secret, next(yield_hotp_counters_from_time())))


def enrol(client, user):
    client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    client.post(reverse("account_reauthenticate"), {"password": PASSWORD})
    secret = client.get(reverse("mfa_activate_totp")).context["form"].secret
    assert client.post(reverse("mfa_activate_totp"), {"code": current_totp(secret)}).status_code == 302
    return secret


def sign_in_with_code(client, user, secret):
    client.logout()
    client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    client.post(reverse("mfa_authenticate"), {"code": current_totp(secret)})
    return client.get(reverse("diagnosis:case_list")).status_code


def test_the_totp_key_and_recovery_seed_are_stored_encrypted_and_still_sign_in(client, pathologist):
    secret = enrol(client, pathologist)
    totp = Authenticator.objects.get(user=pathologist, type="totp")
    stored = totp.data["secret"]
    assert stored.startswith(PREFIX) and secret not in stored and decrypt_secret(stored) == secret
    for authenticator in Authenticator.objects.filter(user=pathologist, type="recovery_codes"):
        assert authenticator.data["seed"].startswith(PREFIX)
    assert sign_in_with_code(client, pathologist, secret) == 200


def test_a_secret_stored_in_the_clear_before_still_signs_in(client, pathologist):
    secret = enrol(client, pathologist)
    Authenticator.objects.filter(user=pathologist, type="totp").update(data={"secret": secret})
    assert sign_in_with_code(client, pathologist, secret) == 200


def test_rotating_the_secret_key_with_a_fallback_keeps_the_authenticators(settings):
    stored = encrypt_secret("JBSWY3DPEHPK3PXP")
    settings.SECRET_KEY_FALLBACKS, settings.SECRET_KEY = [settings.SECRET_KEY], "a-new-key-" + "x" * 50
    assert decrypt_secret(stored) == "JBSWY3DPEHPK3PXP"
    settings.SECRET_KEY_FALLBACKS = []
    from cryptography.fernet import InvalidToken

    with pytest.raises(InvalidToken):  # without the old key nothing decrypts: the database copy alone is useless
        decrypt_secret(stored)


def test_the_migration_encrypts_secrets_stored_before_and_its_reverse_restores_them(pathologist):
    from django.apps import apps as current_apps
    from importlib import import_module

    migration = import_module("accounts.migrations.0008_encrypt_mfa_secrets")
    Authenticator.objects.create(user=pathologist, type="totp", data={"secret": "JBSWY3DPEHPK3PXP"})
    migration.encrypt(current_apps, None)
    stored = Authenticator.objects.get(user=pathologist).data["secret"]
    assert stored.startswith(PREFIX) and decrypt_secret(stored) == "JBSWY3DPEHPK3PXP"
    migration.encrypt(current_apps, None)  # twice: not encrypted twice
    assert Authenticator.objects.get(user=pathologist).data["secret"] == stored
    migration.decrypt(current_apps, None)
    assert Authenticator.objects.get(user=pathologist).data["secret"] == "JBSWY3DPEHPK3PXP"


def test_a_secret_the_key_no_longer_decrypts_refuses_every_code_with_no_server_error(client, pathologist, settings,
                                                                                     caplog):
    secret = enrol(client, pathologist)
    settings.SECRET_KEY = "another-key-after-a-careless-restore-" + "y" * 30
    client.logout()
    client.post(reverse("account_login"), {"login": pathologist.email, "password": PASSWORD})
    response = client.post(reverse("mfa_authenticate"), {"code": current_totp(secret)})
    assert response.status_code == 200  # the form again, with its error: not signed in, not a 500
    assert "_auth_user_id" not in client.session
    assert "cannot be decrypted with SECRET_KEY" in caplog.text


def test_after_a_key_change_rotate_mfa_secrets_lets_the_fallback_go(client, pathologist, settings):
    """Second audit round (R14): with the old key only in SECRET_KEY_FALLBACKS the secrets still opened but stayed
    under it, so removing the fallback, as Django's rotation advice says, refused every code."""
    import io

    from django.core.management import call_command

    secret = enrol(client, pathologist)
    old_key = settings.SECRET_KEY
    settings.SECRET_KEY, settings.SECRET_KEY_FALLBACKS = "the-new-key-" + "z" * 50, [old_key]
    out = io.StringIO()
    call_command("rotate_mfa_secrets", stdout=out)
    assert "authenticator(s) encrypted under the current SECRET_KEY" in out.getvalue()
    settings.SECRET_KEY_FALLBACKS = []
    stored = Authenticator.objects.get(user=pathologist, type="totp").data["secret"]
    assert decrypt_secret(stored) == secret
    assert sign_in_with_code(client, pathologist, secret) == 200
