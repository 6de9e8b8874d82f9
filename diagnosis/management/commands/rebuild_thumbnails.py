"""manage.py rebuild_thumbnails [--all]: make smear thumbnails again from the stored images, as the model reads
them. Thumbnails made before 2026-11-25 came from the pixels as decoded: an EXIF-rotated photograph's lay
sideways and a 16-bit camera image's were white. The rules live in diagnosis.services.display."""
from django.core.management.base import BaseCommand

from diagnosis.models import Smear
from diagnosis.services import display


class Command(BaseCommand):
    help = (
        "Make smear thumbnails again from the stored images, as the model reads them (EXIF orientation applied, "
        "16-bit rescaled, transparency over white). By default only the smears whose thumbnail can differ (an "
        "EXIF orientation other than upright, 16-bit or transparent pixels; read from each file's header); "
        "--all remakes every one. A smear whose stored image is missing or no longer decodes keeps its thumbnail "
        "and is named on stderr."
    )

    def add_arguments(self, parser):
        parser.add_argument("--all", action="store_true", help="Remake every thumbnail, not only those that can differ.")

    def handle(self, **options):
        checked = rebuilt = failed = 0
        for smear in Smear.objects.order_by("pk").iterator(chunk_size=500):
            checked += 1
            try:
                if options["all"] or display.thumbnail_may_differ(smear):
                    display.rebuild_thumbnail(smear)
                    rebuilt += 1
            except display.NotDisplayable as exc:
                failed += 1
                self.stderr.write(self.style.WARNING(f"Smear {smear.pk} ({smear.case}): {exc} Its thumbnail is kept."))
        self.stdout.write(self.style.SUCCESS(
            f"Checked {checked} smear(s): {rebuilt} thumbnail(s) made again"
            + (f", {failed} image(s) that could not be read" if failed else "") + "."))
