"""Upload: every file checked on its own (check_image), the valid ones stored
and queued for classification (add_smears), the rejected ones recorded with
their reason."""
import dataclasses
import hashlib
import io
import logging
import uuid
import warnings
from dataclasses import dataclass
from struct import error as struct_error

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from PIL import Image

from ..models import AuditEvent, Case, RejectedUpload, Smear
from ..selectors import other_cases_with_images
from .audit import record_event
from .case_state import lock_open_case, refresh_case
from .dispatch import enqueue_classification
from .errors import CaseLocked, RejectedImage, StorageFailed, failure_words

logger = logging.getLogger(__name__)


#: Pillow format name -> what users call it.
ALLOWED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "BMP": "BMP"}
THUMBNAIL_SIZE = (320, 320)


@dataclass
class CheckedImage:
    upload: object
    sha256: str
    width: int
    height: int
    image_format: str
    size_bytes: int
    thumbnail_jpeg: bytes
    pixels_sha256: str = ""


def _human_bytes(n):
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _size_and_limit(size, limit):
    """"25.3 MB; the limit is 25.0 MB", in exact bytes when rounding would
    make the two look equal."""
    if _human_bytes(size) == _human_bytes(limit):
        return f"{size:,} bytes; the limit is {limit:,} bytes ({_human_bytes(limit)})"
    return f"{_human_bytes(size)}; the limit is {_human_bytes(limit)}"


#: Leading bytes of the accepted formats: a file that starts like one of them
#: but that Pillow cannot identify has a damaged header, not a wrong format.
FORMAT_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)
#: Pillow format names read as one of ALLOWED_FORMATS. MPO is the
#: multi-picture JPEG that cameras write; its first frame is a plain JPEG.
FORMAT_ALIASES = {"MPO": "JPEG"}


def _signature_format(upload):
    upload.seek(0)
    head = upload.read(16)
    upload.seek(0)
    for signature, name in FORMAT_SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def _check_shape(width, height):
    """Refuse images too small or too elongated to be a smear field or a cell:
    SMEAR_MIN_SIDE_PX for the short side, SMEAR_MAX_ASPECT_RATIO for long/short."""
    min_side, max_ratio = settings.SMEAR_MIN_SIDE_PX, settings.SMEAR_MAX_ASPECT_RATIO
    if min(width, height) < min_side:
        raise RejectedImage(
            f"the image is only {width}×{height} pixels; each side must be at least {min_side} pixels "
            "(a smear field or a cell needs more detail than that)."
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_ratio:
        raise RejectedImage(
            f"the image is {width}×{height} pixels, {ratio:.1f} times longer than wide; at most {max_ratio:g}:1 "
            "is accepted (is it a strip or a cropped border rather than a smear?)."
        )


#: What Pillow may raise on a damaged or hostile image file besides UnidentifiedImageError and the bomb errors.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, struct_error)


#: The most pages a TIFF may hold: the image and its previews (a microscope's preview pyramid has a handful).
MAX_TIFF_PAGES = 8
NEW_SUBFILE_TYPE = 254  # TIFF tag; bit 0 set: "a reduced-resolution version of another image in this file"


#: The most strip or tile pieces one TIFF page may list: a 40-megapixel page in 16x16 tiles needs about 160,000;
#: Pillow builds an object per piece when it opens a page (a page listing 3 million took 17.8 s and 2.1 GB).
MAX_TIFF_PIECES = 200_000
_TIFF_PIECE_TAGS = (273, 324)  # StripOffsets, TileOffsets
#: SubIFDs: pages hung below a page (raw and DNG files keep their full image there). The portal would show, classify
#: and sign the first page while the stored original carried other images nobody saw.
_TIFF_SUB_IMAGES_TAG = 330


def _tiff_pieces_problem(upload):
    """Read the TIFF's page directories (at most MAX_TIFF_PAGES + 1) before Pillow does, and say why the file is
    refused when a page lists more than MAX_TIFF_PIECES strips or tiles or hangs sub-images below it (SubIFDs, which
    Pillow's page count does not see); None when neither, or when the file is not a TIFF this reader follows (Pillow
    then judges it). Classic TIFF and BigTIFF, either byte order."""
    import struct

    upload.seek(0)
    head = upload.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 16:
        return None
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        offset, entry_size, count_format, offset_format = struct.unpack(order + "I", head[4:8])[0], 12, "H", "I"
    elif magic == 43:
        offset, entry_size, count_format, offset_format = struct.unpack(order + "Q", head[8:16])[0], 20, "Q", "Q"
    else:
        return None
    count_size, offset_size = struct.calcsize(count_format), struct.calcsize(offset_format)
    for _page in range(MAX_TIFF_PAGES + 1):
        if not offset:
            return None
        upload.seek(offset)
        raw = upload.read(count_size)
        if len(raw) < count_size:
            return None
        entries = struct.unpack(order + count_format, raw)[0]
        if entries > 4096:  # a page directory lists a few dozen tags
            return f"a page of the TIFF lists {entries:,} tags; the file is refused as damaged or hostile."
        table = upload.read(entries * entry_size + offset_size)
        # A directory cut short is still read as far as it goes: Pillow opens such a page with the tags it has.
        for i in range(min(entries, len(table) // entry_size)):
            entry = table[i * entry_size:(i + 1) * entry_size]
            tag = struct.unpack(order + "H", entry[:2])[0]
            count = struct.unpack(order + offset_format, entry[4:4 + offset_size])[0]
            if tag == _TIFF_SUB_IMAGES_TAG and count:
                return ("the TIFF holds further images below its pages (SubIFDs, as raw and DNG files do); only a "
                        "single image is accepted: export the field as a plain TIFF, PNG or JPEG.")
            if tag in _TIFF_PIECE_TAGS and count > MAX_TIFF_PIECES:
                return (f"a page of the TIFF is cut into {count:,} strips or tiles (at most {MAX_TIFF_PIECES:,} are "
                        "accepted); save the image again with the camera's or an image program's usual settings.")
        if len(table) < entries * entry_size + offset_size:
            return None  # no complete link to a next page: Pillow judges the rest
        offset = struct.unpack(order + offset_format, table[entries * entry_size:])[0]
    return None


def _count_pages(img, most):
    """How many pages the TIFF holds, counting no further than ``most`` + 1, by seeking page after page. Never
    Pillow's n_frames: it walks every page, in time growing with the square of their number (a 24 MB file of
    190,000 tiny pages took 157 s of a web process)."""
    count = 1
    try:
        while count <= most:
            img.seek(count)
            count += 1
    except EOFError:
        pass
    finally:
        img.seek(0)
    return count


def _pages_after_the_first_are_previews(img, pages):
    """A TIFF whose every page after the first is marked a reduced-resolution version of the image (NewSubfileType
    bit 0, as microscope cameras and slide scanners write a preview), at most half the first page's width and
    height (a real reduction, not a second image), and decodes; the first page is not itself so marked. The first
    page is then the image, and the one the model reads. Each preview is decoded here (cheap: a quarter of the
    image's pixels at most), so one that is damaged or not an image refuses the file."""
    try:
        if img.tag_v2.get(NEW_SUBFILE_TYPE, 0) & 1:
            return False
        width, height = img.size
        for page in range(1, pages):
            img.seek(page)
            preview = img.tag_v2.get(NEW_SUBFILE_TYPE, 0) & 1
            if not preview or img.size[0] * 2 > width or img.size[1] * 2 > height:
                return False
            img.load()
        return True
    finally:
        img.seek(0)


def _check_single_frame(img):
    """Refuse a file holding more than one image (a multi-page TIFF, an
    animated PNG): only its first would be classified and shown, silently.
    Two exceptions, whose first frame is the picture: a camera's MPO
    (FORMAT_ALIASES), whose other frames are views of it, and a TIFF of at
    most MAX_TIFF_PAGES pages whose other pages are marked as its
    reduced-resolution previews (_pages_after_the_first_are_previews)."""
    if img.format == "MPO":
        return
    if img.format == "TIFF":
        frames = _count_pages(img, MAX_TIFF_PAGES)
        if frames > MAX_TIFF_PAGES:
            raise RejectedImage(
                f"the file holds more than {MAX_TIFF_PAGES} images (pages); only single-image files are accepted, "
                "since only the first would be classified. Save each image as a file of its own and upload those."
            )
        if frames > 1 and _pages_after_the_first_are_previews(img, frames):
            return
    else:
        frames = getattr(img, "n_frames", 1)  # PNG: read from the animation header, not by walking frames
    if frames > 1:
        kind = {"TIFF": "pages", "PNG": "animation frames"}.get(img.format, "frames")
        raise RejectedImage(
            f"the file holds {frames} images ({kind}); only single-image files are accepted, since only the first "
            "would be classified. Save each image as a file of its own and upload those."
        )


def model_reading(img):
    """The decoded image as the model reads it (ml.runtime.images.load_image: EXIF orientation applied, 8-bit
    RGB, 16-bit rescaled, alpha over white)."""
    from ml.runtime.images import load_image  # here: the web process loads ml.runtime only when it needs it

    return load_image(img)


def thumbnail_jpeg(read):
    """The JPEG thumbnail of model_reading's output, so it looks like the image the model judged. Shrinks ``read``
    in place: no second full-size copy in the web process."""
    read.thumbnail(THUMBNAIL_SIZE)
    buf = io.BytesIO()
    read.save(buf, "JPEG", quality=85)
    return buf.getvalue()


#: Rows hashed at a time: a 40-megapixel field is hashed without a second full copy of its pixels.
_PIXEL_ROWS = 256


def pixels_sha256(read):
    """sha256 of model_reading's output (an 8-bit RGB image) and its size: one picture saved as other bytes (PNG and
    TIFF of the same field, a TIFF with other preview pages) has one. Compared to find the same picture twice."""
    width, height = read.size
    digest = hashlib.sha256(f"RGB {width}x{height}\n".encode())
    for top in range(0, height, _PIXEL_ROWS):
        digest.update(read.crop((0, top, width, min(height, top + _PIXEL_ROWS))).tobytes())
    return digest.hexdigest()


def check_image(upload):
    """Validate one uploaded file as a smear image; return a CheckedImage or
    raise RejectedImage with a readable reason. Reads the whole file. Any
    input ends in one of the two: never an unexpected exception."""
    size = upload.size
    if size == 0:
        raise RejectedImage("the file is empty.")
    if size > settings.SMEAR_MAX_UPLOAD_BYTES:
        raise RejectedImage(f"the file is {_size_and_limit(size, settings.SMEAR_MAX_UPLOAD_BYTES)}.")
    digest = hashlib.sha256()
    upload.seek(0)
    for chunk in upload.chunks():
        digest.update(chunk)
    max_pixels = settings.SMEAR_MAX_PIXELS
    allowed = ", ".join(ALLOWED_FORMATS.values())
    try:
        problem = _tiff_pieces_problem(upload)
        if problem:
            raise RejectedImage(problem)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            upload.seek(0)
            with Image.open(upload, formats=list(ALLOWED_FORMATS)) as img:
                fmt, (width, height) = FORMAT_ALIASES.get(img.format, img.format), img.size
                if fmt not in ALLOWED_FORMATS:
                    raise RejectedImage(f"this is not an image in an accepted format ({allowed}).")
                if width * height > max_pixels:
                    raise RejectedImage(
                        f"the image is {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels."
                    )
                _check_shape(width, height)
                _check_single_frame(img)
                img.verify()  # structure and checksums (PNG CRCs, ...)
            upload.seek(0)
            with Image.open(upload, formats=list(ALLOWED_FORMATS)) as img:
                img.load()  # decodes every pixel (first frame of an MPO): truncated data fails here
                read = model_reading(img)  # may be img itself: used before the file is closed
                pixels = pixels_sha256(read)
                thumbnail = thumbnail_jpeg(read)  # shrinks read: hashed first
                del read
    except RejectedImage:
        raise
    except Image.UnidentifiedImageError:
        looks_like = _signature_format(upload)
        if looks_like:
            raise RejectedImage(
                f"the file starts like a {looks_like} image but its header is damaged, so it cannot be read."
            ) from None
        raise RejectedImage(f"this is not an image in an accepted format ({allowed}).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RejectedImage(f"the image has more than the limit of {max_pixels:,} pixels.") from None
    except DECODE_ERRORS as exc:
        detail = str(exc) or type(exc).__name__
        if "truncated" in detail:
            raise RejectedImage("the image file is truncated (incomplete upload or damaged file).") from None
        raise RejectedImage(f"the image is damaged and cannot be decoded ({detail}).") from None
    finally:
        upload.seek(0)
    return CheckedImage(
        upload=upload,
        sha256=digest.hexdigest(),
        width=width,
        height=height,
        image_format=ALLOWED_FORMATS[fmt],
        size_bytes=size,
        thumbnail_jpeg=thumbnail,
        pixels_sha256=pixels,
    )


@dataclass
class UploadOutcome:
    accepted: list  # of Smear
    rejected: list  # of (filename, reason)
    # (filename, warning) for accepted images already stored in another case: a wrong-patient upload shows here
    elsewhere: list = dataclasses.field(default_factory=list)


def check_takes_smears(case):
    """Refuse (CaseLocked, with the words the technician reads) a case that takes no smears: signed out or
    cancelled, as the database has it now. The upload page asks before files are chosen, add_smears before they
    are read; the upload's transaction asks again under the case lock (lock_open_case)."""
    signed_out_at, cancelled_at = Case.objects.filter(pk=case.pk).values_list("signed_out_at", "cancelled_at").get()
    if signed_out_at:
        raise CaseLocked(f"Case {case.accession_number} is signed out; it takes no more smears. Changes now go "
                         "through an addendum.")
    if cancelled_at:
        raise CaseLocked(f"Case {case.accession_number} was cancelled; it takes no smears.")


def add_smears(case, uploads, user, *, kind):
    """Validate every file; store the valid ones (file + DB row) in one
    transaction, and queue one classification per smear only once that
    transaction has committed. Rejected files are returned with reasons;
    they never prevent the valid ones from being stored. A signed-out case
    takes no more smears (CaseLocked). `kind` (Smear.Kind: a blood-smear
    field or a single cell) applies to the whole batch and decides the model.

    The sign-out check and the duplicate check run again after the case row
    is locked, inside the transaction: a sign-out or another upload of the
    same image that happened while the files were being checked wins. The
    (case, sha256) unique constraint refuses a duplicate even then."""
    if kind not in Smear.Kind.values:
        raise ValueError(f"Unknown smear kind {kind!r}; expected one of {', '.join(Smear.Kind.values)}.")
    check_takes_smears(case)
    checked, rejected = [], []
    for upload in uploads:
        name = upload.name or "(unnamed file)"
        try:
            checked.append(check_image(upload))
        except RejectedImage as exc:
            rejected.append((name, str(exc)))

    batch = uuid.uuid4()  # the files of this upload, for its progress bar and "done" notification
    try:
        accepted, elsewhere = _store(case, user, kind, checked, rejected, batch)
    except OSError as exc:  # the storage refused a file (disk full, permissions): the transaction rolled back
        logger.exception("Upload to case %s could not be stored", case.pk)
        raise StorageFailed(
            f"The images could not be stored: {failure_words(exc)}. Nothing of this upload was saved; try again, "
            "and tell your administrator if it happens again.") from None
    return UploadOutcome(accepted=accepted, rejected=rejected, elsewhere=elsewhere)


def _already_elsewhere(case, images) -> dict:
    """{sha256: warning} for images already in another case, as the same bytes or the same pixels
    (other_cases_with_images): the same image under two patients is most often a wrong-patient upload. Kept, not refused (a case may be opened again as a new one),
    but said at once and written in the upload's audit entry."""
    said = {}
    keys = [(image.sha256, image.pixels_sha256) for image in images]
    for sha256, cases in other_cases_with_images(keys, besides=case).items():
        where = "; ".join(f"case {c.accession_number} of patient {c.patient.lab_id}" for c in cases[:3])
        where += f" and {len(cases) - 3} more" if len(cases) > 3 else ""
        other_patient = any(c.patient_id != case.patient_id for c in cases)
        said[sha256] = (f"the same image is already in {where}"
                        + (": check that it belongs to this patient." if other_patient else "."))
    return said


def _store(case, user, kind, checked, rejected, batch):
    """add_smears' transaction: the rejected files recorded, the new images stored (file and row), their
    classification queued on commit. An OSError from the storage removes the files this upload wrote and
    rolls the transaction back. Returns the smears stored and (file name, warning) for those already in another
    case."""
    accepted, elsewhere = [], []
    with transaction.atomic():
        locked = lock_open_case(case)  # signed out or cancelled since add_smears looked: refused
        seen, seen_pixels = {}, {}
        for sha256, pixels, stored_name in Smear.objects.filter(case=locked).values_list(
                "sha256", "pixels_sha256", "original_filename"):
            seen[sha256] = stored_name
            if pixels:
                seen_pixels[pixels] = stored_name
        unique = []
        for image in checked:
            name = image.upload.name or "(unnamed file)"
            if image.sha256 in seen:
                rejected.append((name, _duplicate_reason(seen[image.sha256])))
            elif image.pixels_sha256 and image.pixels_sha256 in seen_pixels:
                rejected.append((name, _duplicate_reason(seen_pixels[image.pixels_sha256], other_bytes=True)))
            else:
                seen[image.sha256] = name
                if image.pixels_sha256:
                    seen_pixels[image.pixels_sha256] = name
                unique.append(image)
        for name, reason in rejected:
            _record_rejected(locked, user, name, reason)
        elsewhere_said = _already_elsewhere(locked, unique) if unique else {}
        for image in unique:
            name = image.upload.name or "(unnamed file)"
            smear = Smear(
                case=locked,
                kind=kind,
                sha256=image.sha256,
                pixels_sha256=image.pixels_sha256,
                width=image.width,
                height=image.height,
                image_format=image.image_format,
                size_bytes=image.size_bytes,
                original_filename=(image.upload.name or "")[:255],
                uploaded_by=user,
                batch=batch,
                status=Smear.Status.QUEUED,
            )
            try:
                with transaction.atomic():  # savepoint: a duplicate refused by the database skips this file only
                    smear.image.save("smear", image.upload, save=False)
                    smear.thumbnail.save("thumb.jpg", ContentFile(image.thumbnail_jpeg), save=False)
                    smear.save()
            except IntegrityError:
                _delete_files(smear)
                rejected.append((name, _duplicate_reason(None)))
                _record_rejected(locked, user, name, rejected[-1][1])
                continue
            except OSError:
                for written in [*accepted, smear]:
                    _delete_files(written)
                raise
            warning = elsewhere_said.get(smear.sha256)
            record_event(
                locked, AuditEvent.Action.UPLOAD, actor=user, smear=smear,
                detail=(f"{smear.original_filename} ({smear.get_kind_display()}; {smear.width}×{smear.height} "
                        f"{smear.image_format}, sha256 {smear.sha256})" + (f"; {warning}" if warning else "")),
            )
            if warning:
                elsewhere.append((smear.original_filename, warning))
            accepted.append(smear)
            transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
        if accepted:
            refresh_case(locked)
    return accepted, elsewhere


def _record_rejected(case, user, name, reason):
    RejectedUpload.objects.create(case=case, filename=name[:255], reason=reason, uploaded_by=user)
    record_event(case, AuditEvent.Action.UPLOAD_REJECTED, actor=user, detail=f"{name}: {reason}")


def _duplicate_reason(existing_name, other_bytes=False):
    picture = "the same picture, pixel for pixel (saved as another file)," if other_bytes else "the same image"
    if existing_name:
        return f"{picture} is already in this case (as “{existing_name}”)."
    return f"{picture} is already in this case."


def _delete_files(smear):
    for field in (smear.image, smear.thumbnail):
        if field:
            field.storage.delete(field.name)
