"""The two-factor secrets stored before accounts.mfa_adapter encrypted them (a TOTP key, the recovery codes' seed
and any codes allauth migrated from an older format) are encrypted in place; reversing decrypts them again."""
from django.db import migrations

SECRET_FIELDS = {"totp": ("secret",), "recovery_codes": ("seed",)}


def _convert(apps, convert):
    Authenticator = apps.get_model("mfa", "Authenticator")
    for authenticator in Authenticator.objects.all():
        data = dict(authenticator.data)
        for field in SECRET_FIELDS.get(authenticator.type, ()):
            if isinstance(data.get(field), str):
                data[field] = convert(data[field])
        if isinstance(data.get("migrated_codes"), list):
            data["migrated_codes"] = [convert(code) for code in data["migrated_codes"]]
        if data != authenticator.data:
            Authenticator.objects.filter(pk=authenticator.pk).update(data=data)


def encrypt(apps, schema_editor):
    from accounts.mfa_adapter import PREFIX, encrypt_secret

    _convert(apps, lambda text: text if text.startswith(PREFIX) else encrypt_secret(text))


def decrypt(apps, schema_editor):
    from accounts.mfa_adapter import decrypt_secret

    _convert(apps, decrypt_secret)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_admin_every_diagnosis_permission"),
        ("mfa", "0003_authenticator_type_uniq"),
    ]

    operations = [migrations.RunPython(encrypt, decrypt)]
