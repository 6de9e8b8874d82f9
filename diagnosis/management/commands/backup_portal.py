"""manage.py backup_portal DEST: the whole portal (database and media files) into one new, self-checking
folder. The rules live in diagnosis.services.backup."""
from django.core.management.base import BaseCommand, CommandError

from diagnosis.services import backup


class Command(BaseCommand):
    help = (
        "Back up the portal into a new folder DEST/leukportal-backup-<UTC time>/: database.json (dumpdata with "
        "natural keys, read in one consistent snapshot), media/ (a copy of every file under MEDIA_ROOT, taken "
        "after the snapshot) and manifest.json (time, migration state, row counts, size and sha256 of every "
        "file, files the database names that were missing), signed by manifest.hmac (HMAC-SHA256 under a key "
        "derived from SECRET_KEY: restore_portal refuses a backup changed since, or read under another key). "
        "Everything written is read back and checked. "
        "The folder holds patient data, password hashes and MFA secrets: store it as carefully as the portal. "
        "Left out of the database: "
        + "; ".join(f"{label} ({why})" for label, why in backup.EXCLUDED.items()) + "."
    )

    def add_arguments(self, parser):
        parser.add_argument("dest", help="An existing folder (preferably on another disk or machine).")

    def handle(self, dest, **options):
        try:
            manifest = backup.backup_portal(dest)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        for ref in manifest["missing_media"]:
            self.stderr.write(self.style.WARNING(
                f"Missing from MEDIA_ROOT: {ref['path']} ({ref['model']} {ref['pk']}, {ref['field']}); "
                "the backup has the row without its file."))
        missing = len(manifest["missing_media"])
        self.stdout.write(self.style.SUCCESS(
            f"Backed up and verified {backup.summary_line(manifest)}"
            + (f", {missing} missing file(s)" if missing else "") + f" in {manifest['folder']}"))
