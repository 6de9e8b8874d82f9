"""The secrets behind two-factor sign-in (a TOTP key, the recovery codes' seed) encrypted in the database
(MFA_ADAPTER): allauth stores them as they are, so a copy of the database or of a backup would hand over every
second factor with the password hashes. Fernet (AES-128-CBC with HMAC-SHA256, `cryptography`), keyed from
SECRET_KEY; SECRET_KEY_FALLBACKS still decrypt, so rotating the key the Django way keeps every authenticator."""
import base64
import hashlib
import logging

from allauth.mfa.adapter import DefaultMFAAdapter
from django.conf import settings

logger = logging.getLogger(__name__)

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


#: Where an mfa.Authenticator's data holds a secret: a TOTP key, the recovery codes' seed, and (a list) codes
#: allauth migrated from an older format. Read here by the key rotation and by the backup's checks.
SECRET_KEYS = ("secret", "seed")
MIGRATED_CODES = "migrated_codes"


def secret_values(data: dict) -> list[tuple[str, object]]:
    """(where, value) of every secret in an authenticator's data, values as stored (a hostile backup may hold
    anything there)."""
    found = [(key, data[key]) for key in SECRET_KEYS if key in data]
    if MIGRATED_CODES in data:
        codes = data[MIGRATED_CODES]
        found += [(MIGRATED_CODES, code) for code in codes] if isinstance(codes, list) else [(MIGRATED_CODES, codes)]
    return found


def with_secrets_converted(data: dict, convert) -> dict:
    """A copy of an authenticator's data with every secret passed through ``convert``."""
    converted = dict(data)
    for key in SECRET_KEYS:
        if isinstance(converted.get(key), str):
            converted[key] = convert(converted[key])
    if isinstance(converted.get(MIGRATED_CODES), list):
        converted[MIGRATED_CODES] = [convert(code) for code in converted[MIGRATED_CODES]]
    return converted


def encrypt_secret(text: str) -> str:
    return PREFIX + _fernet().encrypt(text.encode()).decode("ascii")


def decrypt_secret(stored: str) -> str:
    if not stored.startswith(PREFIX):
        return stored
    return _fernet().decrypt(stored[len(PREFIX):].encode("ascii")).decode()


def rotate_secret(stored: str) -> str:
    """The stored secret encrypted again under the current SECRET_KEY (MultiFernet.rotate: decrypted with whichever
    key of SECRET_KEY and SECRET_KEY_FALLBACKS opens it); one stored in the clear is encrypted."""
    if not stored.startswith(PREFIX):
        return encrypt_secret(stored)
    return PREFIX + _fernet().rotate(stored[len(PREFIX):].encode("ascii")).decode("ascii")


def _unreadable_secret() -> str:
    """A secret nobody holds, in place of one SECRET_KEY no longer decrypts: every code is then refused as wrong
    (never a server error, never a guessable key), and the log says why."""
    import secrets

    return base64.b32encode(secrets.token_bytes(20)).decode("ascii")


class PortalMFAAdapter(DefaultMFAAdapter):
    def encrypt(self, text: str) -> str:
        return encrypt_secret(text)

    def decrypt(self, encrypted_text: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return decrypt_secret(encrypted_text)
        except InvalidToken:
            logger.error("A two-factor secret cannot be decrypted with SECRET_KEY or SECRET_KEY_FALLBACKS (was the "
                         "key changed, or a backup restored under another?): its codes are refused until the key is "
                         "put back or an administrator removes the user's authenticators.")
            return _unreadable_secret()
