"""How a stored smear image is shown in the browser: the pathologist must see the pixels the model read.

A stored file whose format and pixel mode browsers display as the model reads them (8-bit RGB or grey JPEG, PNG
or BMP) is served as its stored bytes. Any other (TIFF, which Chromium does not display; a 16-bit PNG, which the
model rescales to its own range and a browser shows dark; transparency, which the model lays over white; CMYK) is
shown as a PNG rendition made by ml.runtime.images.load_image, the model's own reader. The rendition is made by
the worker once the prediction is stored (or on first view, for smears stored before it did) and kept in the
smear's `display_image`, so views cost a file read, not a decode (0.4-0.6 s for a 2000x2000 TIFF); the stored
original is never changed and `?original=1` still downloads it."""
import io
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.files.base import ContentFile

from ..models import IMAGE_FORMAT_FILES, AuditEvent, Smear
from .audit import record_event
from .intake import DECODE_ERRORS, model_reading, pixels_sha256, thumbnail_jpeg

logger = logging.getLogger(__name__)

#: Formats Chromium, Firefox and Safari display, with the EXIF orientation applied as the model applies it.
BROWSER_IMAGE_FORMATS = frozenset({"JPEG", "PNG", "BMP"})
#: Pixel modes a browser shows as the model reads them (load_image converts them to RGB without rescaling).
BROWSER_PIXEL_MODES = frozenset({"RGB", "L", "1"})

class NotDisplayable(Exception):
    """The stored image is missing or no longer decodes."""


@dataclass(frozen=True)
class DisplayedImage:
    file: object  # a Django File to stream
    content_type: str
    extension: str
    rendition: bool  # True: a PNG of what the model reads, not the stored bytes


@contextmanager
def _reading_stored(smear):
    """Around any reading of a stored image that passed the upload checks once: a file storage lost, or one that
    no longer decodes (damaged or replaced since), becomes NotDisplayable, logged."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise NotDisplayable("The file is missing from storage.") from None
    except DECODE_ERRORS + (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        logger.warning("Smear %s: the stored %s image cannot be read (%s)", smear.pk, smear.image_format,
                       str(exc) or type(exc).__name__)
        raise NotDisplayable("The stored image can no longer be decoded.") from None


def _open_stored(smear, file):
    """The stored image opened as its recorded format only, its size checked against SMEAR_MAX_PIXELS before
    any decoding (the caller loads it). A context manager over the open file."""
    from PIL import Image

    formats = [smear.image_format] if smear.image_format in IMAGE_FORMAT_FILES else list(IMAGE_FORMAT_FILES)
    image = Image.open(file, formats=formats)
    if image.width * image.height > settings.SMEAR_MAX_PIXELS:
        image.close()
        raise ValueError(f"{image.width}×{image.height} pixels, over SMEAR_MAX_PIXELS")
    return image


def shown_as_stored(smear, file):
    """True when a browser shows the stored bytes as the model reads them: a browser format and an 8-bit RGB,
    grey or opaque palette image. Reads the header only."""
    if smear.image_format not in BROWSER_IMAGE_FORMATS:
        return False
    with file.open("rb") as handle, _open_stored(smear, handle) as image:
        return _plain_8_bit(image)


def _plain_8_bit(image):
    """8-bit RGB, grey or opaque palette pixels: load_image neither rescales them nor lays them over white."""
    if image.mode == "P":
        return "transparency" not in image.info
    return image.mode in BROWSER_PIXEL_MODES


def render(smear, file):
    """PNG bytes of the stored image as the model reads it (ml.runtime.images.load_image: orientation applied,
    8-bit RGB, 16-bit rescaled, alpha over white), first page only (multi-page files are refused at upload)."""
    from ml.runtime.images import load_image  # here: the web process loads ml.runtime only when a page needs it

    with file.open("rb") as handle, _open_stored(smear, handle) as image:
        image.load()
        shown = load_image(image)
        buffer = io.BytesIO()
        shown.save(buffer, "PNG", compress_level=1)  # fast; made once per smear
    return buffer.getvalue()


def _stored_rendition(smear):
    """The kept rendition, or None when there is none or storage lost it."""
    if smear.display_image and smear.display_image.storage.exists(smear.display_image.name):
        return smear.display_image
    return None


def _keep_rendition(smear, png):
    """Store ``png`` as the smear's rendition, unless another request stored one first (then that one is kept and
    ours removed). Saved with a conditional update: the smear's other fields and updated_at stay as they are."""
    field = Smear._meta.get_field("display_image")
    before = smear.display_image.name or ""
    name = field.storage.save(field.generate_filename(smear, "display.png"), ContentFile(png))
    if Smear.objects.filter(pk=smear.pk, display_image=before).update(display_image=name):
        smear.display_image.name = name
    else:
        field.storage.delete(name)
        smear.refresh_from_db(fields=["display_image"])


def displayed_image(smear):
    """What the browser is sent for the smear's image (DisplayedImage). Raises NotDisplayable when the stored
    file is missing or no longer decodes (its rendition, if one was kept, is still served)."""
    extension, content_type = IMAGE_FORMAT_FILES.get(smear.image_format, (".img", "application/octet-stream"))
    kept = _stored_rendition(smear)
    if kept:
        return DisplayedImage(kept, "image/png", ".png", rendition=True)
    with _reading_stored(smear):
        if shown_as_stored(smear, smear.image):
            return DisplayedImage(smear.image, content_type, extension, rendition=False)
        png = render(smear, smear.image)
    _keep_rendition(smear, png)
    return DisplayedImage(ContentFile(png), "image/png", ".png", rendition=True)


def prepare_displayed_image(smear):
    """Make and keep the smear's rendition now when its format needs one, so that the first view does not decode
    the image in the web process (0.4 s for a 2000x2000 TIFF). The worker calls it after storing the prediction;
    smears stored before it did still get theirs on first view. A file shown as stored costs a header read; one that
    no longer decodes is left to the view (a 404 there); returns whether a rendition is kept."""
    try:
        return displayed_image(smear).rendition
    except NotDisplayable:
        return False


def record_original_download(smear, user):
    """A smear's stored file left the portal as a download (``?original=1``): its case's audit trail says who took
    which file when, as the exports page records who took zips of images. Viewing it in the page is not recorded."""
    return record_event(smear.case, AuditEvent.Action.ORIGINAL_DOWNLOADED, actor=user, smear=smear,
                        new_value=smear.original_filename,
                        detail=f"Original file of smear {smear.pk} ({smear.image_format or 'unknown format'}) "
                               "downloaded")


# --- Thumbnails made before they followed the model's reading ----------------------------------------------

EXIF_ORIENTATION = 0x0112


def thumbnail_may_differ(smear):
    """Whether the smear's thumbnail, if made from the pixels as decoded (before thumbnails followed the model's
    reading), differs from one made now: the file carries an EXIF orientation other than upright, or pixels that
    load_image rescales (16-bit) or lays over white. Reads the header only."""
    with _reading_stored(smear), smear.image.open("rb") as handle, _open_stored(smear, handle) as image:
        return image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1) or not _plain_8_bit(image)


def rebuild_thumbnail(smear):
    """Make the smear's thumbnail again from its stored image (intake.thumbnail_jpeg), replacing the old file.
    Raises NotDisplayable when the stored image is missing or no longer decodes (the old thumbnail is kept)."""
    with _reading_stored(smear), smear.image.open("rb") as handle, _open_stored(smear, handle) as image:
        image.load()
        jpeg = thumbnail_jpeg(model_reading(image))
    field = Smear._meta.get_field("thumbnail")
    old = smear.thumbnail.name
    name = field.storage.save(field.generate_filename(smear, "thumb.jpg"), ContentFile(jpeg))
    Smear.objects.filter(pk=smear.pk).update(thumbnail=name)  # not a change to the smear: updated_at stays
    smear.thumbnail.name = name
    if old:
        field.storage.delete(old)



def hash_pixels(smear):
    """Fill the smear's pixels_sha256 (smears stored before it existed have none) from its stored image, as the
    upload computes it. Raises NotDisplayable when the stored image is missing or no longer decodes."""
    with _reading_stored(smear), smear.image.open("rb") as handle, _open_stored(smear, handle) as image:
        image.load()
        digest = pixels_sha256(model_reading(image))
    Smear.objects.filter(pk=smear.pk).update(pixels_sha256=digest)  # not a change to the smear: updated_at stays
    smear.pixels_sha256 = digest
    return digest
