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
        "checks the row counts against the manifest. The backup's signature (manifest.hmac, keyed from "
        "SECRET_KEY) is checked first: a backup changed since it was written, or written with another SECRET_KEY "
        "(not in SECRET_KEY_FALLBACKS), is refused. Restoring a backup someone else wrote or changed gives them "
        "the portal (their users, password hashes, roles)."
    )

    def add_arguments(self, parser):
        parser.add_argument("src", help="A leukportal-backup-<UTC time> folder.")
        parser.add_argument(
            "--unsigned", action="store_true",
            help="Restore a backup without checking its signature: only one you made yourself before backups were "
                 "signed (format 1), kept where nobody else could change it. Every other check still applies.")

    def handle(self, src, unsigned=False, **options):
        if unsigned:
            self.stderr.write(self.style.WARNING(
                "--unsigned: the backup's signature is not checked. Whoever could change this folder decides the "
                "restored portal's users, password hashes and roles: restore only a backup of your own."))
        try:
            manifest = backup.restore_portal(src, unsigned=unsigned)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        for note in manifest["notes"]:
            self.stderr.write(self.style.WARNING(note))
        self.stdout.write(self.style.SUCCESS(
            f"Restored {backup.summary_line(manifest)} from the backup of {manifest['created_at']} "
            f"({manifest['folder']}); row counts match the manifest."))
