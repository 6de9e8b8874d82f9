"""Writing a backup (`manage.py backup_portal`): the database in one consistent snapshot, then the media files,
the manifest and its signature; everything written is read back and checked (checking.verify_backup)."""
import datetime
import json
import os
import shutil
from pathlib import Path

import django
from django.conf import settings
from django.core import serializers
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from ..files import create_private_file, dir_mode, file_mode
from . import shared
from .checking import verify_backup
from .shared import (
    DATABASE_FILE, DUMP_FORMAT, EXCLUDED, FOLDER_PREFIX, FORMAT, MANIFEST_FILE, MEDIA_DIR, SIGNATURE_FILE, BackupError,
    _copy_file, _hash_file, _open_regular, _unencrypted_in_database, _walk_files, _write_signature,
    consistent_snapshot, migration_state, referenced_files, row_counts,
)


# --- Backup --------------------------------------------------------------------------------------------------

def backup_portal(dest, *, now=None):
    """Write DEST/leukportal-backup-<UTC time>/ (database.json, media/, manifest.json, manifest.hmac), check
    what was written, and return the manifest with the folder's path as manifest["folder"]. Raises BackupError
    when DEST is missing, not a folder, inside MEDIA_ROOT, or the backup folder exists already, when MEDIA_ROOT
    holds a symbolic link or special file, or when the database holds an unencrypted two-factor secret (a restore
    would refuse it). A failed backup leaves no folder behind."""
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
        unencrypted = _unencrypted_in_database()
        if unencrypted:
            from accounts.mfa_adapter import PREFIX

            raise BackupError(
                f"The database holds two-factor secrets stored unencrypted (without accounts.mfa_adapter's "
                f"{PREFIX!r} prefix): {'; '.join(unencrypted[:5])}. A restore refuses them (an unencrypted secret is "
                f"what someone who changed a backup would plant), so this backup could not be restored. The portal "
                f"stores every secret encrypted since migration accounts.0008: this one was written by hand (shell, "
                f"admin). Delete that authenticator (admin, Authenticators) and have its user set up two-factor "
                f"sign-in again, then back up again.")
        if DUMP_FORMAT not in serializers.get_serializer_formats():
            serializers.register_serializer(DUMP_FORMAT, shared.__name__)
        call_command("dumpdata", exclude=sorted(EXCLUDED), natural_foreign=True, natural_primary=True,
                     use_base_manager=True, format=DUMP_FORMAT, output=str(database), verbosity=0)
    os.chmod(database, file_mode())
    with _open_regular(folder, DATABASE_FILE) as f:
        size, digest = _hash_file(f)
    # After the snapshot: every file it names existed before its row was committed.
    files, problems = _walk_files(media_root)
    if problems:
        raise BackupError(f"MEDIA_ROOT ({media_root}) holds {'; '.join(problems[:5])}: a backup copies regular "
                          f"files only and follows no link (a restore refuses them). Put the file or folder itself "
                          f"in place of each, then back up again.")
    media = []
    for relative in files:
        with _open_regular(media_root, relative) as source:
            file_size, file_digest = _copy_file(source, folder / MEDIA_DIR / relative)
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
        "signature": f"{SIGNATURE_FILE}: HMAC-SHA256 of this file's bytes, key derived from SECRET_KEY",
    }
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")
    with create_private_file(folder / MANIFEST_FILE) as f:
        f.write(data)
    _write_signature(folder, data)
    return manifest
