"""What a backup holds and how its files and signature are handled: shared by writing, checking and restoring
(the package docstring, diagnosis/services/backup/__init__.py, describes a backup folder)."""
import datetime
import hashlib
import hmac
import os
import re
import stat
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from django.apps import apps
from django.conf import settings
from django.core.serializers import json as json_serializer
from django.db import connection, models, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils.encoding import force_bytes

from ..files import create_private_file, make_private_dirs


#: Format 2: format 1 (the same manifest) with manifest.hmac. Format 1 backups restore only with --unsigned.
FORMAT = 2
UNSIGNED_FORMATS = (1, 2)
FOLDER_PREFIX = "leukportal-backup-"
DATABASE_FILE = "database.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.hmac"
SIGNATURE_SCHEME = "hmac-sha256"
#: What the backup key is derived for: a key of its own, not SECRET_KEY itself (which signs sessions and links).
SIGNING_LABEL = b"leukportal.backup-manifest.v1"
MEDIA_DIR = "media"
CHUNK = 1024 * 1024

#: What database.json leaves out (app label or app.model), and why. Everything else in INSTALLED_APPS is
#: included: accounts (users, password hashes), auth groups (the roles) and their permissions by natural key,
#: allauth's e-mail addresses and confirmations (account), MFA authenticators (mfa: TOTP secrets, recovery
#: codes), and all of diagnosis, the append-only audit trail included.
EXCLUDED = {
    "contenttypes": "rebuilt by `migrate`; rows that point at one name it by app and model (natural key)",
    "auth.permission": "rebuilt by `migrate`; groups and users name their permissions by natural key",
    "sessions": "sign-ins, not data: everyone signs in again after a restore",
    # The admin's History list names each object by its id as text: users get new ids on restore (natural keys),
    # so its rows would point at the wrong people. Clinical changes are all in diagnosis.AuditEvent.
    "admin.logentry": "the Django admin's own History list, which names objects by id (users are renumbered)",
}


#: dumpdata's format for database.json: Django's JSON with every microsecond of a time kept (DjangoJSONEncoder
#: cuts them to milliseconds). The file is plain Django JSON: `loaddata database.json` reads it as it is.
DUMP_FORMAT = "leukportal-json"


class _FullPrecisionEncoder(json_serializer.DjangoJSONEncoder):
    def default(self, o):
        if isinstance(o, datetime.datetime) or (isinstance(o, datetime.time) and o.utcoffset() is None):
            text = o.isoformat()
            return text[:-6] + "Z" if text.endswith("+00:00") else text
        return super().default(o)


class Serializer(json_serializer.Serializer):
    """The DUMP_FORMAT serializer (this module is registered as its serializer module)."""

    def _init_options(self):
        super()._init_options()
        self.json_kwargs["cls"] = _FullPrecisionEncoder


Deserializer = json_serializer.Deserializer


class BackupError(Exception):
    """Why a backup or restore was refused or failed; str() is the sentence the operator reads."""


# --- What is in the database ---------------------------------------------------------------------------------

def included_models():
    """Every concrete model whose rows are backed up, the automatic many-to-many tables (a user's roles) too."""
    for model in apps.get_models(include_auto_created=True):
        meta = model._meta
        if meta.proxy or not meta.managed or meta.app_label in EXCLUDED or meta.label_lower in EXCLUDED:
            continue
        yield model


def row_counts():
    return {model._meta.label_lower: model._base_manager.count()
            for model in sorted(included_models(), key=lambda m: m._meta.label_lower)}


def migration_state(loader=None):
    """The latest applied migration of every app ({app: name}), as the database records it."""
    latest = {}
    loader = loader or MigrationLoader(connection, ignore_no_migrations=True)
    for app, name in loader.applied_migrations:
        latest[app] = max(name, latest.get(app, ""))
    return dict(sorted(latest.items()))


def referenced_files():
    """Every file a FileField or ImageField of a backed-up row names: {model, pk, field, path}."""
    found = []
    for model in included_models():
        for field in model._meta.concrete_fields:
            if isinstance(field, models.FileField):
                rows = (model._base_manager.exclude(**{f"{field.name}__isnull": True})
                        .exclude(**{field.name: ""}).order_by("pk").values_list("pk", field.attname))
                found += [{"model": model._meta.label_lower, "pk": pk, "field": field.name, "path": name}
                          for pk, name in rows]
    return found


@contextmanager
def consistent_snapshot():
    """One transaction whose reads all see the same moment. SQLite: the transaction's read lock does it.
    MariaDB/MySQL: Django's connections run READ COMMITTED, so the transaction is started explicitly as
    REPEATABLE READ WITH CONSISTENT SNAPSHOT (InnoDB; nothing is locked, the portal keeps working). Inside an
    enclosing transaction (a test's), that transaction is the snapshot."""
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if outermost and connection.vendor == "mysql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        yield


# --- Files ---------------------------------------------------------------------------------------------------
# Nothing here follows a symbolic link: folders are walked with lstat, and a file is opened one folder at a time,
# each relative to the one before with O_NOFOLLOW (a link swapped in after the walk is not followed either).

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _kind(mode):
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def _open_regular(root, relative):
    """root/relative (a relative POSIX path) open for reading (binary), following no symbolic link below root
    (root itself, a folder the operator names, may be one). Raises BackupError naming the path when a part of
    it is a symbolic link or not a folder, or the file is not a regular file (a pipe is never opened, so it
    cannot block), and FileNotFoundError when it is missing."""
    parts = PurePosixPath(relative).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    try:
        for depth, part in enumerate(parts):
            here, last = "/".join(parts[:depth + 1]), depth == len(parts) - 1
            info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not (stat.S_ISREG if last else stat.S_ISDIR)(info.st_mode):
                raise BackupError(f"{here} is {_kind(info.st_mode)}, not a {'regular file' if last else 'folder'}")
            flags = os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):
                    raise
                raise BackupError(f"{here} was replaced (by a symbolic link?) while it was read "
                                  f"({exc.strerror})") from None
            os.close(fd)
            fd = child
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise BackupError(f"{here} was replaced (by a symbolic link?) while it was read")
        if not parts:
            raise BackupError(f"{root} is a folder, not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _walk_files(root, shown=""):
    """(files, problems): the relative POSIX paths of the regular files under root, sorted, found with lstat, and
    one sentence for each symbolic link (to a file or a folder) or special file found instead, named shown +
    its path. Nothing is followed; a missing root holds no files."""
    files, problems = [], []

    def walk(path, prefix):
        try:
            entries = sorted(os.scandir(path), key=lambda entry: entry.name)
        except FileNotFoundError:
            return
        for entry in entries:
            relative = prefix + entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISDIR(mode):
                walk(entry.path, relative + "/")
            elif stat.S_ISREG(mode):
                files.append(relative)
            else:
                problems.append(f"{shown}{relative} is {_kind(mode)}, not a regular file or folder")

    walk(root, "")
    return sorted(files), problems


def _copy_file(source, dst):
    """Copy the open file source to the new file dst (never overwrites), with the media file mode and source's
    times. Returns (size, sha256 of the bytes written)."""
    make_private_dirs(dst.parent)
    digest, size = hashlib.sha256(), 0
    target = create_private_file(dst)
    try:
        with target:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(dst)  # no half-written file left behind
        raise
    info = os.fstat(source.fileno())
    os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
    return size, digest.hexdigest()


def _hash_file(source):
    """(size, sha256) of the rest of the open file source."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: source.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _safe_relative(path, manifest=MANIFEST_FILE):
    """A manifest path, refused unless it is a plain relative path that stays inside its folder (a hand-edited
    manifest must not write outside MEDIA_ROOT, nor name one file twice in two spellings)."""
    pure = PurePosixPath(path)
    if (not path or "\x00" in path or "\\" in path or pure.is_absolute() or ".." in pure.parts
            or str(pure) != path or path == "."):
        raise BackupError(f"{manifest} names the file {path!r} outside the media folder or not as a plain "
                          f"relative path; refusing.")
    return pure


# --- The signature -------------------------------------------------------------------------------------------

def _backup_keys():
    """The keys a backup's signature is checked with: derived from SECRET_KEY (the one that signs), then from
    each of SECRET_KEY_FALLBACKS. HMAC of a fixed label, so the key serves backups only."""
    secrets = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return [hmac.new(force_bytes(secret), SIGNING_LABEL, hashlib.sha256).digest() for secret in secrets]


def _signature(data, key):
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _write_signature(folder, data=None):
    """Write folder/manifest.hmac: the HMAC-SHA256 of manifest.json's bytes (data, or the file's) under the key
    derived from SECRET_KEY."""
    folder = Path(folder)
    if data is None:
        with _open_regular(folder, MANIFEST_FILE) as f:
            data = f.read()
    with create_private_file(folder / SIGNATURE_FILE, "w", encoding="ascii") as f:
        f.write(f"{SIGNATURE_SCHEME}:{_signature(data, _backup_keys()[0])}\n")


def _check_signature(folder, data, *, unsigned=False):
    """"verified" when manifest.hmac holds the signature of data (manifest.json's bytes) under SECRET_KEY or one
    of SECRET_KEY_FALLBACKS. Otherwise a BackupError, or with unsigned (the operator's --unsigned) "missing" or
    "invalid"."""
    try:
        with _open_regular(folder, SIGNATURE_FILE) as f:
            text = f.read(256)
    except FileNotFoundError:
        if unsigned:
            return "missing"
        raise BackupError(
            f"The backup in {folder} is not signed: it has no {SIGNATURE_FILE}. Backups are signed since format "
            f"{FORMAT} (an HMAC of {MANIFEST_FILE} under a key derived from SECRET_KEY); one without a signature was "
            f"written by an older version of the portal, or someone removed its signature. A restore hands this portal "
            f"to whoever wrote the backup (its users, password hashes, roles and two-factor secrets), so an unsigned "
            f"backup is restored only on purpose: if you made it yourself before backups were signed and nobody "
            f"else could change it since, run `manage.py restore_portal --unsigned {folder}`. Nothing was "
            f"changed.") from None
    except BackupError as exc:
        raise BackupError(f"The backup in {folder} is damaged or was changed: {exc}; refusing.") from None
    match = re.fullmatch(rb"hmac-sha256:([0-9a-f]{64})\n?", text)
    if match and any(hmac.compare_digest(_signature(data, key), match[1].decode("ascii")) for key in _backup_keys()):
        return "verified"
    if unsigned:
        return "invalid"
    raise BackupError(
        f"The backup in {folder} was changed after it was written, or was written with another SECRET_KEY: its "
        f"signature ({SIGNATURE_FILE}) does not match {MANIFEST_FILE} under this portal's SECRET_KEY or any of "
        f"SECRET_KEY_FALLBACKS. Restore it with the SECRET_KEY of the portal that wrote it (a restore needs that "
        f"key anyway: the two-factor secrets in the backup are encrypted with it), or add that key to "
        f"SECRET_KEY_FALLBACKS. Nothing was changed.")


# --- Two-factor secrets ------------------------------------------------------------------------------------------

def _unencrypted_secrets(data):
    """The parts of an mfa.authenticator's data that hold a secret without accounts.mfa_adapter's encryption
    (its "fernet:" PREFIX): a TOTP secret, a recovery seed, codes migrated from an older format."""
    from accounts.mfa_adapter import PREFIX, secret_values

    if not isinstance(data, dict):
        return ["data (not an object)"]
    return list(dict.fromkeys(where for where, value in secret_values(data)
                              if not (isinstance(value, str) and value.startswith(PREFIX))))


def _describe_user(natural_key):
    if isinstance(natural_key, list) and len(natural_key) == 1 and isinstance(natural_key[0], str):
        return natural_key[0][:100]
    return repr(natural_key)[:100]


def _unencrypted_in_database():
    """The unencrypted secrets of the database's authenticators, described ("mfa.authenticator of x (secret)")."""
    if not apps.is_installed("allauth.mfa"):
        return []
    authenticator = apps.get_model("mfa", "Authenticator")
    found = []
    for email, data in authenticator._base_manager.order_by("pk").values_list("user__email", "data"):
        keys = _unencrypted_secrets(data)
        if keys:
            found.append(f"mfa.authenticator of {email} ({', '.join(keys)})")
    return found


def _unencrypted_in_rows(objects):
    return [f"mfa.authenticator of {_describe_user(obj['fields'].get('user'))} ({', '.join(keys)})"
            for obj in objects if obj["model"] == "mfa.authenticator"
            for keys in [_unencrypted_secrets(obj["fields"].get("data"))] if keys]


def _undecryptable_secrets(objects):
    """How many encrypted secrets in the rows this portal's SECRET_KEY (and fallbacks) cannot decrypt."""
    from cryptography.fernet import InvalidToken

    from accounts.mfa_adapter import decrypt_secret, secret_values

    count = 0
    for obj in objects:
        if obj["model"] != "mfa.authenticator" or not isinstance(obj["fields"].get("data"), dict):
            continue
        for _, value in secret_values(obj["fields"]["data"]):
            if isinstance(value, str):
                try:
                    decrypt_secret(value)
                except (InvalidToken, ValueError):
                    count += 1
    return count
