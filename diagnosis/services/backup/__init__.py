"""Backup and restore of the whole portal (`manage.py backup_portal`, `restore_portal`). A backup folder
`leukportal-backup-<UTC time>/` holds:

- `database.json`: `dumpdata` with natural keys of every row the portal needs (not EXCLUDED), read in one
  consistent snapshot: one transaction, on MariaDB/MySQL started as REPEATABLE READ WITH CONSISTENT SNAPSHOT
  (Django opens MySQL connections at READ COMMITTED, where each table's SELECT sees another moment);
- `media/`: every file under MEDIA_ROOT, copied after the snapshot, so every file it names already existed;
- `manifest.json`: when, migration state, row counts per model, size and sha256 of every file, and the files
  the snapshot names that MEDIA_ROOT lacked;
- `manifest.hmac`: HMAC-SHA256 of manifest.json's exact bytes (and through its sha256 values, of every other
  file) under a key derived from SECRET_KEY. Whoever can write to the backup store can recompute sha256 values,
  not this: a restore loads every password hash, role and two-factor secret the backup holds, so a backup
  changed by someone else would hand them the portal.

Restore goes into a freshly migrated, empty portal only, checks everything before it changes anything (the
signature first, with SECRET_KEY or any of SECRET_KEY_FALLBACKS; then the manifest's shape, every file's sha256,
only regular files and folders, never a symbolic link; database.json's rows only of the models a backup includes,
no unencrypted two-factor secret), and loads the rows it checked (a private copy of database.json, not the file
again) and copies the files in one transaction (on failure: rolled back, its files removed). Files and folders get
FILE_UPLOAD_PERMISSIONS / FILE_UPLOAD_DIRECTORY_PERMISSIONS, the modes of the portal's media.
"""
from .shared import (
    _open_regular,
    _write_signature,
    BackupError,
    CHUNK,
    consistent_snapshot,
    DATABASE_FILE,
    Deserializer,
    DUMP_FORMAT,
    EXCLUDED,
    FOLDER_PREFIX,
    FORMAT,
    included_models,
    MANIFEST_FILE,
    MEDIA_DIR,
    migration_state,
    referenced_files,
    row_counts,
    Serializer,
    SIGNATURE_FILE,
    SIGNATURE_SCHEME,
    SIGNING_LABEL,
    UNSIGNED_FORMATS,
)
from .writing import (
    backup_portal,
)
from .checking import (
    read_manifest,
    verify_backup,
)
from .restoring import (
    check_empty_portal,
    check_migrations,
    check_row_counts,
    restore_portal,
    summary_line,
)

__all__ = [
    "_open_regular",
    "_write_signature",
    "BackupError",
    "CHUNK",
    "consistent_snapshot",
    "DATABASE_FILE",
    "Deserializer",
    "DUMP_FORMAT",
    "EXCLUDED",
    "FOLDER_PREFIX",
    "FORMAT",
    "included_models",
    "MANIFEST_FILE",
    "MEDIA_DIR",
    "migration_state",
    "referenced_files",
    "row_counts",
    "Serializer",
    "SIGNATURE_FILE",
    "SIGNATURE_SCHEME",
    "SIGNING_LABEL",
    "UNSIGNED_FORMATS",
    "backup_portal",
    "read_manifest",
    "verify_backup",
    "check_empty_portal",
    "check_migrations",
    "check_row_counts",
    "restore_portal",
    "summary_line",
]
