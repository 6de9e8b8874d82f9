from django.core.management.base import BaseCommand, CommandError

from diagnosis import services


class Command(BaseCommand):
    help = (
        "Export every reviewed smear of signed-out cases (label confirmed or changed by the pathologist) "
        "into DEST/staging/<final stage>/ (blood-smear fields) and DEST/screening/<blast|normal>/ (single cells), "
        "each with its labels.csv and each the layout `python -m ml train --data DIR` reads."
    )

    def add_arguments(self, parser):
        parser.add_argument("dest", help="An empty or new folder.")

    def handle(self, dest, **options):
        try:
            n = services.export_reviewed(dest)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(self.style.SUCCESS(f"Exported {n} reviewed smear(s) to {dest}"))
