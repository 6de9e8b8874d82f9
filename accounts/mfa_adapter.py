"""The secrets behind two-factor sign-in (a TOTP key, the recovery codes' seed) encrypted in the database
(MFA_ADAPTER): allauth stores them as they are, so a copy of the database or of a backup would hand over every
second factor with the password hashes. Fernet (AES-128-CBC with HMAC-SHA256, `cryptography`), keyed from
SECRET_KEY; SECRET_KEY_FALLBACKS still decrypt, so rotating the key the Django way keeps every authenticator."""
import base64
import hashlib

from allauth.mfa.adapter import DefaultMFAAdapter
from django.conf import settings

#: Marks an encrypted value; a value without it was stored before encryption and is read as it is.
PREFIX = "fernet:"


def _fernet_key(secret_key: str) -> bytes:
    # A key of its own for this use, not SECRET_KEY itself (which also signs sessions and links).
    digest = hashlib.sha256(f"leukportal.mfa-secrets:{secret_key}".encode()).digest()
    return base64.urlsafe_b64encode(digest)


def _fernet():
    from cryptography.fernet import Fernet, MultiFernet

    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet([Fernet(_fernet_key(key)) for key in keys])


def encrypt_secret(text: str) -> str:
    return PREFIX + _fernet().encrypt(text.encode()).decode("ascii")


def decrypt_secret(stored: str) -> str:
    if not stored.startswith(PREFIX):
        return stored
    return _fernet().decrypt(stored[len(PREFIX):].encode("ascii")).decode()


class PortalMFAAdapter(DefaultMFAAdapter):
    def encrypt(self, text: str) -> str:
        return encrypt_secret(text)

    def decrypt(self, encrypted_text: str) -> str:
        return decrypt_secret(encrypted_text)
