"""manage.py hash_smear_pixels: fill the pixel hash (Smear.pixels_sha256) of smears stored before the upload
computed it, so that the duplicate and "already in another case" checks find them by their pixels too, not only by
their bytes. The rule lives in diagnosis.services.intake.pixels_sha256."""
from django.core.management.base import BaseCommand

from diagnosis.models import Smear
from diagnosis.services import display


class Command(BaseCommand):
    help = (
        "Fill the pixel hash of every smear that has none, from its stored image as the model reads it. A smear "
        "whose stored image is missing or no longer decodes is named on stderr and keeps none."
    )

    def handle(self, **options):
        hashed = failed = 0
        for smear in Smear.objects.filter(pixels_sha256="").order_by("pk").iterator(chunk_size=500):
            try:
                display.hash_pixels(smear)
                hashed += 1
            except display.NotDisplayable as exc:
                failed += 1
                self.stderr.write(self.style.WARNING(f"Smear {smear.pk} ({smear.case}): {exc}"))
        self.stdout.write(self.style.SUCCESS(
            f"{hashed} smear(s) hashed" + (f", {failed} image(s) that could not be read" if failed else "") + "."))
