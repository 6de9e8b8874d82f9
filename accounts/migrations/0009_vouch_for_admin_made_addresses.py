"""Accounts made before accounts.adapter.vouch_for_address (the admin's Add user, createsuperuser) have no allauth
address record; the first allauth flow they meet (an anonymous password-reset request, the e-mail page) made an
unconfirmed one, which refused them two-factor set-up and a role. Each gets its address as confirmed and primary,
as the admin list already showed it ("created by an admin"). Reversing removes nothing: the records are kept."""
from django.db import migrations


def vouch(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    EmailAddress = apps.get_model("account", "EmailAddress")
    for user in User.objects.filter(emailaddress__isnull=True).exclude(email=""):
        if EmailAddress.objects.filter(email__iexact=user.email, verified=True).exists():
            continue  # another account holds it confirmed: left for an administrator to sort out
        EmailAddress.objects.filter(email__iexact=user.email, verified=False).delete()
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0008_encrypt_mfa_secrets"),
        ("account", "0009_emailaddress_unique_primary_email"),
    ]

    operations = [migrations.RunPython(vouch, migrations.RunPython.noop)]
