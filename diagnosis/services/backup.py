"""Backup and restore of the whole portal (`manage.py backup_portal`, `restore_portal`). A backup folder
`leukportal-backup-<UTC time>/` holds:

- `database.json`: `dumpdata` with natural keys of every row the portal needs (not EXCLUDED), read in one
  consistent snapshot: one transaction, on MariaDB/MySQL started as REPEATABLE READ WITH CONSISTENT SNAPSHOT
  (Django opens MySQL connections at READ COMMITTED, where each table's SELECT sees another moment);
- `media/`: every file under MEDIA_ROOT, copied after the snapshot, so every file it names already existed;
- `manifest.json`: when, migration state, row counts per model, size and sha256 of every file, and the files
  the snapshot names that MEDIA_ROOT lacked.

Restore goes into a freshly migrated, empty portal only, checks everything before it changes anything, and
loads the rows and copies the files in one transaction (on failure: rolled back, its files removed). Files
and folders get FILE_UPLOAD_PERMISSIONS / FILE_UPLOAD_DIRECTORY_PERMISSIONS, the modes of the portal's media.
"""
import datetime
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import django
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import serializers
from django.core.management import call_command
from django.core.serializers import json as json_serializer
from django.db import connection, models, transaction
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from ..models import Case, Patient
from .files import create_private_file, dir_mode, file_mode, make_private_dirs

FORMAT = 1
FOLDER_PREFIX = "leukportal-backup-"
DATABASE_FILE = "database.json"
MANIFEST_FILE = "manifest.json"
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

def _copy_file(src, dst):
    """Copy src to the new file dst (never overwrites), with the media file mode and src's times.
    Returns (size, sha256 of the bytes written)."""
    make_private_dirs(dst.parent)
    digest, size = hashlib.sha256(), 0
    target = create_private_file(dst)
    try:
        with open(src, "rb") as source, target:
            for chunk in iter(lambda: source.read(CHUNK), b""):
                digest.update(chunk)
                target.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(dst)  # no half-written file left behind
        raise
    stat = os.stat(src)
    os.utime(dst, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return size, digest.hexdigest()


def _hash_file(path):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _files_under(root):
    """Relative POSIX paths of every file under root, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _safe_relative(path):
    """A manifest path, refused unless it stays inside its folder (a hand-edited manifest must not write
    outside MEDIA_ROOT)."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise BackupError(f"The manifest names the file {path!r} outside the media folder; refusing.")
    return pure


# --- Backup --------------------------------------------------------------------------------------------------

def backup_portal(dest, *, now=None):
    """Write DEST/leukportal-backup-<UTC time>/ (database.json, media/, manifest.json), check what was
    written, and return the manifest with the folder's path as manifest["folder"]. Raises BackupError when
    DEST is missing, not a folder, inside MEDIA_ROOT, or the backup folder exists already. A failed backup
    leaves no folder behind."""
    dest, media_root = Path(dest), Path(settings.MEDIA_ROOT)
    if not dest.exists():
        raise BackupError(f"{dest} does not exist; create the folder first (on another disk than the portal's).")
    if not dest.is_dir():
        raise BackupError(f"{dest} is not a folder.")
    if dest.resolve().is_relative_to(media_root.resolve()):
        raise BackupError(f"{dest} is inside MEDIA_ROOT ({media_root}); back up to a folder outside it.")
    now = (now or timezone.now()).astimezone(datetime.timezone.utc)
    folder = dest / f"{FOLDER_PREFIX}{now:%Y%m%dT%H%M%SZ}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        raise BackupError(f"{folder} already exists; refusing to write into an existing backup.") from None
    try:
        os.chmod(folder, dir_mode())
        manifest = _write_backup(folder, media_root, now)
        verify_backup(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {**manifest, "folder": str(folder)}


def _write_backup(folder, media_root, now):
    database = folder / DATABASE_FILE
    with consistent_snapshot():
        migrations, counts, referenced = migration_state(), row_counts(), referenced_files()
        if DUMP_FORMAT not in serializers.get_serializer_formats():
            serializers.register_serializer(DUMP_FORMAT, __name__)
        call_command("dumpdata", exclude=sorted(EXCLUDED), natural_foreign=True, natural_primary=True,
                     use_base_manager=True, format=DUMP_FORMAT, output=str(database), verbosity=0)
    os.chmod(database, file_mode())
    size, digest = _hash_file(database)
    # After the snapshot: every file it names existed before its row was committed.
    media = []
    for relative in _files_under(media_root):
        file_size, file_digest = _copy_file(media_root / relative, folder / MEDIA_DIR / relative)
        media.append({"path": relative, "size": file_size, "sha256": file_digest})
    copied = {entry["path"] for entry in media}
    manifest = {
        "format": FORMAT,
        "portal": "LeukPortal",
        "created_at": now.isoformat(),
        "django": django.get_version(),
        "database_vendor": connection.vendor,
        "excluded": EXCLUDED,
        "migrations": migrations,
        "row_counts": counts,
        "rows": sum(counts.values()),
        "database": {"path": DATABASE_FILE, "size": size, "sha256": digest},
        "media": media,
        "media_files": len(media),
        "media_bytes": sum(entry["size"] for entry in media),
        "missing_media": [ref for ref in referenced if ref["path"] not in copied],
    }
    with create_private_file(folder / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest


def read_manifest(folder):
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{folder} has no {MANIFEST_FILE}: not a portal backup, or an unfinished one.") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} cannot be read ({exc}).") from None
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not {"database", "media", "migrations", "row_counts"} <= manifest.keys()):
        raise BackupError(f"{path} is not a manifest this portal can read (format {FORMAT} expected).")
    return manifest


def verify_backup(folder):
    """Re-read a backup folder: database.json and every media file must have the manifest's size and sha256,
    database.json must parse and hold the manifest's row count of every model, and media/ must hold nothing
    else. Returns the manifest; raises BackupError naming what is wrong."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    problems = []
    expected = {DATABASE_FILE: manifest["database"]}
    for entry in manifest["media"]:
        expected[f"{MEDIA_DIR}/{_safe_relative(entry['path'])}"] = entry
    for relative, entry in expected.items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
            continue
        size, digest = _hash_file(path)
        if (size, digest) != (entry["size"], entry["sha256"]):
            problems.append(f"{relative} does not match the manifest (sha256 {digest}, expected {entry['sha256']})")
    extra = [f"{MEDIA_DIR}/{p}" for p in _files_under(folder / MEDIA_DIR) if f"{MEDIA_DIR}/{p}" not in expected]
    problems += [f"{relative} is not in the manifest" for relative in extra]
    if not problems:
        problems += _database_problems(folder / DATABASE_FILE, manifest["row_counts"])
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise BackupError(f"The backup in {folder} is damaged or was changed: {shown}.")
    return manifest


def _database_problems(path, counts):
    try:
        with open(path, encoding="utf-8") as f:
            objects = json.load(f)
    except ValueError as exc:
        return [f"{DATABASE_FILE} does not parse ({exc})"]
    dumped = {}
    for obj in objects:
        dumped[obj["model"]] = dumped.get(obj["model"], 0) + 1
    through = {m._meta.label_lower for m in apps.get_models(include_auto_created=True) if m._meta.auto_created}
    return [f"{DATABASE_FILE} holds {dumped.get(label, 0)} {label} rows, the manifest {n}"
            for label, n in counts.items() if label not in through and dumped.get(label, 0) != n]


# --- Restore -------------------------------------------------------------------------------------------------

def restore_portal(src):
    """Restore a backup folder into this freshly migrated, empty portal. Checks first, changing nothing when
    one fails: the backup's integrity (verify_backup), its migration state against the code and database, an
    empty database (no user, patient or case) and no file in MEDIA_ROOT that it would overwrite. Then, in one
    transaction: loaddata (a raw save, so the append-only audit trail loads), the row counts against the
    manifest, and the media files. Returns the manifest with "notes" (e.g. the database is migrated further
    than the backup)."""
    folder, media_root = Path(src), Path(settings.MEDIA_ROOT)
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder.")
    manifest = verify_backup(folder)
    notes = check_migrations(manifest["migrations"])
    if manifest.get("missing_media"):
        notes.append(f"{len(manifest['missing_media'])} file(s) the database names were already missing when the "
                     f"backup was made (manifest.json, missing_media).")
    check_empty_portal()
    entries = [(_safe_relative(entry["path"]), entry) for entry in manifest["media"]]
    taken = [str(relative) for relative, _ in entries if os.path.lexists(media_root / relative)]
    if taken:
        raise BackupError(f"MEDIA_ROOT ({media_root}) already holds {len(taken)} file(s) the backup would "
                          f"overwrite, e.g. {', '.join(taken[:3])}; restore into an empty MEDIA_ROOT.")
    written = []
    try:
        with transaction.atomic():
            try:
                call_command("loaddata", str(folder / DATABASE_FILE), verbosity=0)
            except Exception as exc:
                raise BackupError(f"{DATABASE_FILE} could not be loaded ({exc}); nothing was restored. Restore with "
                                  f"the portal version that made the backup, then upgrade.") from exc
            check_row_counts(manifest["row_counts"])
            for relative, entry in entries:
                target = media_root / relative
                try:
                    copied = _copy_file(folder / MEDIA_DIR / relative, target)
                except FileExistsError:
                    raise BackupError(f"{target} appeared during the restore; nothing was restored.") from None
                written.append(target)
                if copied != (entry["size"], entry["sha256"]):
                    raise BackupError(f"{relative} changed while it was restored; nothing was restored.")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return {**manifest, "folder": str(folder), "notes": notes}


def check_migrations(backup_state):
    """Refuse a backup made by newer code (a migration this code does not have) or a database not migrated as
    far as the backup; return a note when the database is migrated further than the backup."""
    loader = MigrationLoader(connection, ignore_no_migrations=True)
    unknown = [f"{app}.{name}" for app, name in backup_state.items() if (app, name) not in loader.disk_migrations]
    if unknown:
        raise BackupError(f"The backup was made by a newer version of the portal: this code does not have the "
                          f"migration(s) {', '.join(unknown)}. Upgrade the code to the backup's version (or later), "
                          f"run `manage.py migrate`, then restore.")
    missing = [f"{app}.{name}" for app, name in backup_state.items() if (app, name) not in loader.applied_migrations]
    if missing:
        raise BackupError(f"This database is not migrated as far as the backup ({', '.join(missing)} not applied): "
                          f"run `python manage.py migrate` first.")
    ahead = [f"{app} ({name} > {backup_state[app]})" for app, name in migration_state(loader).items()
             if app in backup_state and name > backup_state[app]]
    return [f"The database is migrated further than the backup: {', '.join(ahead)}."] if ahead else []


def check_empty_portal():
    """Refuse a database holding any user, patient or case: a restore never merges into a working portal."""
    held = [str(model._meta.verbose_name_plural) for model in (get_user_model(), Patient, Case)
            if model._base_manager.exists()]
    if held:
        raise BackupError(f"The database already holds {', '.join(held)}; restore only into a freshly migrated, "
                          f"empty portal (a new database, `manage.py migrate`).")


def check_row_counts(expected):
    actual = row_counts()
    wrong = [f"{label}: {actual.get(label)} instead of {n}" for label, n in expected.items() if actual.get(label) != n]
    if wrong:
        raise BackupError(f"After loading, the row counts differ from the backup ({'; '.join(wrong[:5])}); "
                          f"nothing was restored.")


def summary_line(manifest):
    return f"{manifest['rows']:,} rows, {manifest['media_files']:,} media files, {manifest['media_bytes']:,} bytes"
