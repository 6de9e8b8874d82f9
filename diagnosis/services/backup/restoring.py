"""Restoring a backup (`manage.py restore_portal`) into a freshly migrated, empty portal: checked first
(checking._check_backup), then loaded and copied in one transaction."""
import os
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader

from ...models import Case, Patient
from ..files import create_private_file
from .checking import _check_backup
from .shared import (
    DATABASE_FILE, MEDIA_DIR, BackupError, _copy_file, _open_regular, _undecryptable_secrets, migration_state,
    row_counts,
)


# --- Restore -------------------------------------------------------------------------------------------------

def restore_portal(src, *, unsigned=False):
    """Restore a backup folder into this freshly migrated, empty portal. Checks first, changing nothing when
    one fails: the backup's signature and integrity (verify_backup; unsigned lets a missing or wrong signature
    through, nothing else), its migration state against the code and database, an empty database (no user,
    patient or case) and no file in MEDIA_ROOT that it would overwrite. Then, in one transaction: loaddata of
    the rows checked (a raw save, so the append-only audit trail loads; from a private copy of the checked bytes,
    not database.json again), the row counts against the manifest, and the media files (opened without following
    a link). Returns the manifest with "notes" (e.g. the signature was not checked, the database is migrated
    further than the backup)."""
    folder, media_root = Path(src), Path(settings.MEDIA_ROOT)
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder.")
    checked = _check_backup(folder, unsigned=unsigned)
    manifest, notes = checked.manifest, []
    if checked.signature != "verified":
        why = ("it has none" if checked.signature == "missing" else
               "it does not match under this SECRET_KEY or SECRET_KEY_FALLBACKS: changed, or written with another key")
        notes.append(f"The backup's signature was not checked (--unsigned; {why}): its users, password hashes and "
                     f"roles are now this portal's; check the administrators and superusers.")
    notes += check_migrations(manifest["migrations"])
    if manifest.get("missing_media"):
        notes.append(f"{len(manifest['missing_media'])} file(s) the database names were already missing when the "
                     f"backup was made (manifest.json, missing_media).")
    undecryptable = _undecryptable_secrets(checked.objects)
    if undecryptable:
        notes.append(f"{undecryptable} two-factor secret(s) cannot be decrypted with this SECRET_KEY (or its "
                     f"fallbacks): their users' codes are refused until the backup's key is set as SECRET_KEY or in "
                     f"SECRET_KEY_FALLBACKS, or an administrator deletes their authenticators.")
    check_empty_portal()
    entries = [(PurePosixPath(entry["path"]), entry) for entry in manifest["media"]]
    taken = [str(relative) for relative, _ in entries if os.path.lexists(media_root / relative)]
    if taken:
        raise BackupError(f"MEDIA_ROOT ({media_root}) already holds {len(taken)} file(s) the backup would "
                          f"overwrite, e.g. {', '.join(taken[:3])}; restore into an empty MEDIA_ROOT.")
    written = []
    try:
        with tempfile.TemporaryDirectory(prefix="leukportal-restore-") as private:  # 0700, removed afterwards
            fixture = Path(private) / DATABASE_FILE
            with create_private_file(fixture) as f:
                f.write(checked.database)
            with transaction.atomic():
                try:
                    call_command("loaddata", str(fixture), verbosity=0)
                except Exception as exc:
                    raise BackupError(f"{DATABASE_FILE} could not be loaded ({exc}); nothing was restored. Restore "
                                      f"with the portal version that made the backup, then upgrade.") from exc
                check_row_counts(manifest["row_counts"])
                notes += replay_data_rules(manifest["migrations"])
                for relative, entry in entries:
                    target = media_root / relative
                    try:
                        with _open_regular(folder, f"{MEDIA_DIR}/{relative}") as source:
                            copied = _copy_file(source, target)
                    except FileExistsError:
                        raise BackupError(f"{target} appeared during the restore; nothing was restored.") from None
                    except FileNotFoundError:
                        raise BackupError(f"{MEDIA_DIR}/{relative} disappeared from the backup during the restore; "
                                          f"nothing was restored.") from None
                    except BackupError as exc:
                        raise BackupError(f"The backup in {folder} was changed during the restore: {exc}; nothing "
                                          f"was restored.") from None
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


#: Data migrations whose rule the restore applies to rows from a backup made before them (loaddata brings the
#: rows as they were; the migration ran on this database when it was empty). Each: (app, first migration name that
#: has the rule, function of no arguments returning how many rows it changed, what the note says it did).
REPLAYED_DATA_RULES = [
    ("accounts", "0009_vouch_for_admin_made_addresses", "accounts.adapter.vouch_for_unrecorded_addresses",
     "account(s) without a record of their address got it as confirmed and primary (migration accounts.0009)"),
]


def replay_data_rules(backup_state):
    """Apply REPLAYED_DATA_RULES newer than the backup to the loaded rows (inside the restore's transaction);
    returns notes for those that changed anything. (Migration accounts.0008's encryption of two-factor secrets is
    not replayed: a backup holding clear secrets is refused before loading, checking.py.)"""
    from django.utils.module_loading import import_string

    notes = []
    for app, migration, rule, what in REPLAYED_DATA_RULES:
        if backup_state.get(app, "") >= migration:
            continue
        changed = import_string(rule)()
        if changed:
            notes.append(f"The backup predates {app}.{migration.split('_')[0]}: {changed} {what}.")
    return notes


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
