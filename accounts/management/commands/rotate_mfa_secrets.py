"""manage.py rotate_mfa_secrets: after SECRET_KEY changed (the old key kept in SECRET_KEY_FALLBACKS), encrypt every
stored two-factor secret under the new key, so the fallback can be removed without locking anyone out."""
from allauth.mfa.models import Authenticator
from cryptography.fernet import InvalidToken
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.mfa_adapter import rotate_secret, with_secrets_converted


class Command(BaseCommand):
    help = ("Encrypt every stored two-factor secret (TOTP keys, recovery seeds) under the current SECRET_KEY. Run it "
            "after changing SECRET_KEY with the old key in SECRET_KEY_FALLBACKS; then the fallback can go. A secret "
            "no key opens is named and left as it is (its owner needs a new authenticator).")

    def handle(self, **options):
        rotated = unreadable = 0
        with transaction.atomic():
            for authenticator in Authenticator.objects.select_for_update().select_related("user"):
                try:
                    data = with_secrets_converted(authenticator.data, rotate_secret)
                except InvalidToken:
                    unreadable += 1
                    self.stderr.write(self.style.WARNING(
                        f"The {authenticator.type} secret of {authenticator.user.email} opens with no key in "
                        "SECRET_KEY or SECRET_KEY_FALLBACKS: left as it is; remove it in the admin so that its "
                        "owner sets up a new authenticator."))
                    continue
                if data != authenticator.data:
                    Authenticator.objects.filter(pk=authenticator.pk).update(data=data)
                    rotated += 1
        self.stdout.write(self.style.SUCCESS(
            f"{rotated} authenticator(s) encrypted under the current SECRET_KEY"
            + (f"; {unreadable} could not be opened" if unreadable else "") + "."))
