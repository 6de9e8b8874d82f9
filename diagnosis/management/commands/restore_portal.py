"""manage.py restore_portal SRC: a backup_portal folder into a freshly migrated, empty portal. The rules
live in diagnosis.services.backup."""
from django.core.management.base import BaseCommand, CommandError

from diagnosis.services import backup


class Command(BaseCommand):
    help = (
        "Restore a folder written by backup_portal into this portal, which must be freshly migrated and empty "
        "(no user, patient or case; no file in MEDIA_ROOT that the backup would overwrite). Refused, changing "
        "nothing, when a file's sha256 differs from the manifest or the backup was made by newer code (upgrade "
        "the code and migrate first). Loads database.json and copies the media files in one transaction, then "
        "checks the row counts against the manifest."
    )

    def add_arguments(self, parser):
        parser.add_argument("src", help="A leukportal-backup-<UTC time> folder.")

    def handle(self, src, **options):
        try:
            manifest = backup.restore_portal(src)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        for note in manifest["notes"]:
            self.stderr.write(self.style.WARNING(note))
        self.stdout.write(self.style.SUCCESS(
            f"Restored {backup.summary_line(manifest)} from the backup of {manifest['created_at']} "
            f"({manifest['folder']}); row counts match the manifest."))
