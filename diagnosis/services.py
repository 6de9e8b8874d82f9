"""Domain rules of the diagnosis app, in one place.

Views, Celery tasks and the admin call these functions; none of them
re-implements a rule.
"""
import functools
import hashlib
import io
import logging
import math
import random
import time
import uuid
import warnings
from struct import error as struct_error
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image

from .models import (
    IMAGE_FORMAT_FILES,
    ADDENDUM_MAX_LENGTH,
    REVIEW_COMMENT_MAX_LENGTH,
    REVIEW_REASON_MAX_LENGTH,
    SCREENING_LABELS,
    AuditEvent,
    Case,
    CaseAddendum,
    CellLabel,
    Prediction,
    RejectedUpload,
    Smear,
    Stage,
)
from . import notifications
from .formatting import format_when
from .models import label_display as _label_display

logger = logging.getLogger(__name__)

#: Pillow format name -> what users call it.
ALLOWED_FORMATS = {"JPEG": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "BMP": "BMP"}
THUMBNAIL_SIZE = (320, 320)


# --------------------------------------------------------------------------
# Upload validation and storage
# --------------------------------------------------------------------------
class RejectedImage(Exception):
    """An uploaded file that is not an acceptable smear image. str() is the
    reason, written for the technician."""


@dataclass
class CheckedImage:
    upload: object
    sha256: str
    width: int
    height: int
    image_format: str
    size_bytes: int
    thumbnail_jpeg: bytes


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
                img.verify()  # structure and checksums (PNG CRCs, ...)
            upload.seek(0)
            with Image.open(upload, formats=list(ALLOWED_FORMATS)) as img:
                img.load()  # decodes every pixel (first frame of an MPO): truncated data fails here
                thumb = img.convert("RGB")
                thumb.thumbnail(THUMBNAIL_SIZE)
                buf = io.BytesIO()
                thumb.save(buf, "JPEG", quality=85)
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
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError, TypeError, struct_error) as exc:
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
        thumbnail_jpeg=buf.getvalue(),
    )


@dataclass
class UploadOutcome:
    accepted: list  # of Smear
    rejected: list  # of (filename, reason)


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
    if Case.objects.filter(pk=case.pk, signed_out_at__isnull=False).exists():
        raise CaseLocked(f"Case {case.accession_number} is signed out; it takes no more smears.")
    checked, rejected = [], []
    for upload in uploads:
        name = upload.name or "(unnamed file)"
        try:
            checked.append(check_image(upload))
        except RejectedImage as exc:
            rejected.append((name, str(exc)))

    accepted = []
    batch = uuid.uuid4()  # the files of this upload, for its progress bar and "done" notification
    with transaction.atomic():
        locked = Case.objects.select_for_update().get(pk=case.pk)
        if locked.is_signed_out:
            raise CaseLocked(f"Case {locked.accession_number} was signed out meanwhile; it takes no more smears.")
        seen = dict(Smear.objects.filter(case=locked).values_list("sha256", "original_filename"))
        unique = []
        for image in checked:
            name = image.upload.name or "(unnamed file)"
            if image.sha256 in seen:
                rejected.append((name, _duplicate_reason(seen[image.sha256])))
            else:
                seen[image.sha256] = name
                unique.append(image)
        for name, reason in rejected:
            _record_rejected(locked, user, name, reason)
        for image in unique:
            name = image.upload.name or "(unnamed file)"
            smear = Smear(
                case=locked,
                kind=kind,
                sha256=image.sha256,
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
            record_event(
                locked, AuditEvent.Action.UPLOAD, actor=user, smear=smear,
                detail=(f"{smear.original_filename} ({smear.get_kind_display()}; {smear.width}×{smear.height} "
                        f"{smear.image_format}, sha256 {smear.sha256})"),
            )
            accepted.append(smear)
            transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
        if accepted:
            refresh_case(locked)
    return UploadOutcome(accepted=accepted, rejected=rejected)


def _record_rejected(case, user, name, reason):
    RejectedUpload.objects.create(case=case, filename=name[:255], reason=reason, uploaded_by=user)
    record_event(case, AuditEvent.Action.UPLOAD_REJECTED, actor=user, detail=f"{name}: {reason}")


def _duplicate_reason(existing_name):
    if existing_name:
        return f"the same image is already in this case (as “{existing_name}”)."
    return "the same image is already in this case."


def _delete_files(smear):
    for field in (smear.image, smear.thumbnail):
        if field:
            field.storage.delete(field.name)


# --------------------------------------------------------------------------
# Queueing
# --------------------------------------------------------------------------
def enqueue_classification(smear_id):
    """Send the classification message. If the broker is unreachable the
    smear simply stays queued: the periodic sweep sends it again later."""
    from .tasks import classify_smear

    try:
        classify_smear.apply_async((smear_id,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:  # broker down: stored data is safe, the sweep re-sends
        logger.exception("Could not queue smear %s; the sweep will re-send it", smear_id)
        return False
    return True


# --------------------------------------------------------------------------
# Transient database errors
# --------------------------------------------------------------------------
#: MySQL/MariaDB error codes of a transaction that may succeed when run again:
#: 1213 deadlock (the server rolled it back), 1205 lock wait timeout.
TRANSIENT_DB_ERROR_CODES = {1205, 1213}
TRANSACTION_ATTEMPTS = 4


def is_transient_db_error(exc: BaseException) -> bool:
    """A deadlock, a lock wait timeout or SQLite's "database is locked": the
    same transaction run again later can succeed."""
    if not isinstance(exc, OperationalError):
        return False
    code = exc.args[0] if exc.args else None
    return code in TRANSIENT_DB_ERROR_CODES or "database is locked" in str(exc) or "deadlock" in str(exc).lower()


def retry_transaction(func):
    """Run a function that opens its own transaction again (with a short random
    back-off) when the database rolled it back for a transient reason. Inside
    an outer transaction nothing is retried: the outer one is lost and must be
    retried by its own caller."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except OperationalError as exc:
                if (attempt == TRANSACTION_ATTEMPTS or not is_transient_db_error(exc)
                        or transaction.get_connection().in_atomic_block):
                    raise
                logger.warning("%s: transient database error (%s); attempt %s of %s",
                               func.__name__, exc, attempt + 1, TRANSACTION_ATTEMPTS)
                time.sleep(random.uniform(0.02, 0.1) * 2**attempt)

    return wrapper


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------
def claim_smear(smear_id):
    """Atomically move a smear from queued to processing. Returns the smear if
    this caller won the claim, None otherwise (already claimed, finished, or
    gone): a re-delivered message therefore never classifies twice."""
    now = timezone.now()
    won = Smear.objects.filter(pk=smear_id, status=Smear.Status.QUEUED).update(
        status=Smear.Status.PROCESSING, claimed_at=now, attempts=F("attempts") + 1, error="", updated_at=now
    )
    if not won:
        return None
    # The case stays "processing": queued and processing both count as pending.
    return Smear.objects.select_related("case").get(pk=smear_id)


class InvalidModelOutput(ValueError):
    pass


def _checked_probabilities(result, labels):
    try:
        raw = result["probabilities"]
        if set(raw) != set(labels):
            raise ValueError(f"classes {sorted(raw)} instead of {sorted(labels)}")
        probs = {label: float(raw[label]) for label in labels}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidModelOutput(f"the model returned an unexpected result ({exc!r}).") from None
    if not all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in probs.values()):
        raise InvalidModelOutput("the model returned probabilities outside [0, 1].")
    if abs(sum(probs.values()) - 1.0) > 1e-3:
        raise InvalidModelOutput(f"the model's probabilities sum to {sum(probs.values()):.4f}, not 1.")
    return {label: min(1.0, max(0.0, p)) for label, p in probs.items()}


def validate_result(result, kind=Smear.Kind.FIELD):
    """Check the predictor's dict for a smear of this kind; return
    (task, label, {label: probability}, threshold).

    * field (staging model): {"stage", "probabilities": the four stages};
    * cell (screening model): {"label": "blast"|"normal", "probabilities":
      {"blast", "normal"}, "threshold"}, and the label must be the one the
      threshold gives (blast iff P(blast) >= threshold).
    """
    if not isinstance(result, dict):
        raise InvalidModelOutput(f"the model returned an unexpected result ({type(result).__name__}).")
    if kind == Smear.Kind.CELL:
        if "stage" in result:
            raise InvalidModelOutput("a single cell was classified by the staging model instead of the screening model.")
        probs = _checked_probabilities(result, SCREENING_LABELS)
        label = result.get("label")
        if label not in SCREENING_LABELS:
            raise InvalidModelOutput(f"the screening model returned an unknown label ({label!r}).")
        try:
            threshold = float(result["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelOutput(f"the screening model returned no usable threshold ({exc!r}).") from None
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise InvalidModelOutput(f"the screening model's threshold {threshold} is outside [0, 1].")
        expected = CellLabel.BLAST if probs[CellLabel.BLAST] >= threshold else CellLabel.NORMAL
        # Within float rounding of the threshold either label is the model's call.
        if label != expected and abs(probs[CellLabel.BLAST] - threshold) > 1e-6:
            raise InvalidModelOutput(
                f"the screening model's label {label!r} does not follow from P(blast) "
                f"{probs[CellLabel.BLAST]:.3f} and its threshold {threshold:.3f}."
            )
        return Prediction.Task.SCREENING, label, probs, threshold
    if "label" in result and "stage" not in result:
        raise InvalidModelOutput("a blood-smear field was classified by the screening model instead of the staging model.")
    try:
        stage = Stage(result["stage"]).value
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelOutput(f"the model returned an unexpected result ({exc!r}).") from None
    probs = _checked_probabilities(result, Stage.values)
    return Prediction.Task.STAGING, stage, probs, None


def validate_domain(result):
    """The domain check's verdict in a predictor's dict: (in_domain, domain_score, reason).
    Every result of `ml` carries it; a result without one is refused rather than shown as a suggestion."""
    in_domain = result.get("in_domain") if isinstance(result, dict) else None
    if not isinstance(in_domain, bool):
        raise InvalidModelOutput("the model's result has no domain check verdict (in_domain).")
    try:
        score = float(result["domain_score"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelOutput(f"the model's result has no usable domain score ({exc!r}).") from None
    if not math.isfinite(score):
        raise InvalidModelOutput("the model's domain score is not a finite number.")
    reason = str(result.get("reason") or "").strip()[:300]
    if not in_domain and not reason:
        reason = "the image is unlike the images the model was trained on"
    return in_domain, score, reason if not in_domain else ""


@retry_transaction
def record_prediction(smear_id, result, latency_ms):
    """Store the prediction of a smear this worker has claimed (either model's
    output, checked against the smear's kind).

    Locks the case row first, then the smear, as every writer of a case does
    (upload, review, sign-out): one lock order means two workers finishing
    smears of one case wait for each other instead of deadlocking. A deadlock
    or lock timeout still reported by the database runs the transaction again."""
    row = Smear.objects.filter(pk=smear_id).values_list("kind", "case_id").first()
    if row is None:
        logger.warning("Smear %s is gone; prediction dropped", smear_id)
        return None
    kind, case_id = row
    task, label, probs, threshold = validate_result(result, kind)
    in_domain, domain_score, domain_reason = validate_domain(result)
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        smear = Smear.objects.select_for_update().get(pk=smear_id)
        if smear.status != Smear.Status.PROCESSING:
            logger.warning("Smear %s is %s, not processing; prediction dropped", smear_id, smear.status)
            return None
        prediction = Prediction.objects.create(
            smear=smear,
            task=task,
            model_name=str(result.get("model", ""))[:100],
            model_version=str(result.get("model_version", ""))[:100],
            label=label,
            probabilities=probs,
            threshold=threshold,
            latency_ms=max(0, int(round(latency_ms))),
            in_domain=in_domain,
            domain_score=domain_score,
            domain_reason=domain_reason,
        )
        smear.status = Smear.Status.DONE
        smear.error = ""
        smear.transient_failure = False
        smear.save(update_fields=["status", "error", "transient_failure", "updated_at"])
        detail = ", ".join(f"{k} {p:.3f}" for k, p in probs.items())
        if threshold is not None:
            detail += f"; threshold on P(blast) {threshold:.3f}"
        detail += f"; domain score {domain_score:.3f}"
        if not in_domain:
            detail += f"; outside the model's domain, no suggestion: {domain_reason}"
        record_event(
            case, AuditEvent.Action.PREDICTION, smear=smear, new_value=label,
            model_version=f"{prediction.model_name} {prediction.model_version}".strip(), detail=detail,
        )
        _refresh_case_by_id(case_id)
    return prediction


def store_heatmap(prediction_id, image_bytes, explained_class=""):
    """Store the Grad-CAM overlay (JPEG bytes) the worker computed after the
    prediction. Never touches the prediction's result."""
    prediction = Prediction.objects.get(pk=prediction_id)
    prediction.heatmap.save("heatmap.jpg", ContentFile(image_bytes), save=False)
    prediction.heatmap_error = ""
    prediction.save(update_fields=["heatmap", "heatmap_error"])
    return prediction


def heatmap_failed(prediction_id, reason):
    """Record why no heat map could be made; the prediction stays as it is."""
    Prediction.objects.filter(pk=prediction_id).update(heatmap_error=reason[:2000])


@retry_transaction
def mark_failed(smear_id, reason, *, transient=False):
    """Mark a claimed smear failed with a readable reason; nothing else in the
    case is touched, the image stays stored and the smear can be retried.
    `transient` (a temporary database error) lets the sweep retry it by itself.
    Locks the case first, like record_prediction."""
    case_id = Smear.objects.filter(pk=smear_id).values_list("case_id", flat=True).first()
    if case_id is None:
        return False
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        updated = Smear.objects.filter(pk=smear_id, status=Smear.Status.PROCESSING).update(
            status=Smear.Status.FAILED, error=reason[:2000], transient_failure=transient, updated_at=timezone.now()
        )
        if updated:
            smear = Smear.objects.get(pk=smear_id)
            record_event(case, AuditEvent.Action.CLASSIFICATION_FAILED, smear=smear, detail=reason)
            _refresh_case_by_id(case_id)
    return bool(updated)


def retry_smear(smear, user=None):
    """Put a failed smear back in the queue. Returns False when it was not
    failed (e.g. someone else retried it already)."""
    with transaction.atomic():
        Case.objects.select_for_update().filter(pk=smear.case_id).first()  # case first: one lock order
        updated = Smear.objects.filter(pk=smear.pk, status=Smear.Status.FAILED).update(
            status=Smear.Status.QUEUED, claimed_at=None, transient_failure=False, updated_at=timezone.now()
        )
        if updated:
            record_event(smear.case, AuditEvent.Action.RETRY, actor=user, smear=smear, old_value=Smear.Status.FAILED,
                         new_value=Smear.Status.QUEUED)
            _refresh_case_by_id(smear.case_id)
            transaction.on_commit(lambda: enqueue_classification(smear.pk))
    return bool(updated)


def sweep_stale_smears(now=None):
    """Recover smears left behind by workers that died.

    * processing for longer than SMEAR_STALE_AFTER_SECONDS (longer than the
      hard task time limit, so no live task can still own it): re-queued, or
      failed once it has used SMEAR_MAX_ATTEMPTS attempts;
    * queued for longer than SMEAR_RESEND_QUEUED_AFTER_SECONDS (the message may
      have been lost, e.g. the broker was down at upload time): message sent
      again; a duplicate is harmless because of claim_smear;
    * failed by a temporary database error (deadlock, lock wait timeout) with
      attempts left: queued again without waiting for a person.

    Returns a dict of counts.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS)
    resend_before = now - timedelta(seconds=settings.SMEAR_RESEND_QUEUED_AFTER_SECONDS)
    max_attempts = settings.SMEAR_MAX_ATTEMPTS
    requeued, failed, resent = [], [], []
    stale = Smear.objects.filter(status=Smear.Status.PROCESSING, claimed_at__lt=stale_before)
    for smear in stale.only("pk", "attempts", "case_id", "claimed_at"):
        still_stale = Smear.objects.filter(pk=smear.pk, status=Smear.Status.PROCESSING, claimed_at=smear.claimed_at)
        with transaction.atomic():
            Case.objects.select_for_update().filter(pk=smear.case_id).first()  # case first: one lock order
            if smear.attempts >= max_attempts:
                reason = (
                    f"Classification did not finish after {smear.attempts} attempts "
                    "(the worker stopped or ran out of time each time)."
                )
                if still_stale.update(status=Smear.Status.FAILED, error=reason, updated_at=now):
                    failed.append(smear.pk)
                    record_event(Case.objects.get(pk=smear.case_id), AuditEvent.Action.CLASSIFICATION_FAILED,
                                 smear=smear, detail=reason)
                    _refresh_case_by_id(smear.case_id)
            elif still_stale.update(status=Smear.Status.QUEUED, claimed_at=None, updated_at=now):
                requeued.append(smear.pk)
                _refresh_case_by_id(smear.case_id)
                transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
    transient = Smear.objects.filter(status=Smear.Status.FAILED, transient_failure=True, attempts__lt=max_attempts)
    for smear in transient.only("pk", "case_id"):
        with transaction.atomic():
            Case.objects.select_for_update().filter(pk=smear.case_id).first()
            if Smear.objects.filter(pk=smear.pk, status=Smear.Status.FAILED, transient_failure=True).update(
                status=Smear.Status.QUEUED, claimed_at=None, transient_failure=False, updated_at=now
            ):
                requeued.append(smear.pk)
                record_event(Case.objects.get(pk=smear.case_id), AuditEvent.Action.RETRY, smear=smear,
                             old_value=Smear.Status.FAILED, new_value=Smear.Status.QUEUED,
                             detail="Queued again by the sweep after a temporary database error.")
                _refresh_case_by_id(smear.case_id)
                transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
    for pk in Smear.objects.filter(status=Smear.Status.QUEUED, updated_at__lt=resend_before).values_list(
        "pk", flat=True
    ):
        # Touch updated_at first so the next sweep does not re-send it at once.
        if Smear.objects.filter(pk=pk, status=Smear.Status.QUEUED).update(updated_at=now):
            if enqueue_classification(pk):
                resent.append(pk)
    if requeued or failed or resent:
        logger.warning("Sweep: re-queued %s, failed %s, re-sent %s", requeued, failed, resent)
    return {"requeued": len(requeued), "failed": len(failed), "resent": len(resent)}


def resend_lost_heatmaps(now=None) -> int:
    """Heat maps lost with their worker: a prediction whose heat map is neither
    stored nor failed SMEAR_STALE_AFTER_SECONDS after it was made (or last
    requested) gets it requested again; after SMEAR_MAX_ATTEMPTS requests it
    is recorded as unavailable. Run by the periodic sweep task. Returns the
    number of requests sent."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS)
    max_attempts = settings.SMEAR_MAX_ATTEMPTS
    lost = Prediction.objects.filter(heatmap="", heatmap_error="").filter(
        Q(heatmap_requested_at__isnull=True, created_at__lt=stale_before) | Q(heatmap_requested_at__lt=stale_before)
    )
    sent = []
    for prediction in lost.only("pk", "heatmap_attempts"):
        claim = Prediction.objects.filter(pk=prediction.pk, heatmap="", heatmap_error="",
                                          heatmap_attempts=prediction.heatmap_attempts)
        if prediction.heatmap_attempts >= max_attempts:
            claim.update(heatmap_error=f"Heat map unavailable: the worker stopped while computing it "
                                       f"({prediction.heatmap_attempts} attempts).")
        elif claim.update(heatmap_attempts=prediction.heatmap_attempts + 1, heatmap_requested_at=now):
            if enqueue_heatmap(prediction.pk):
                sent.append(prediction.pk)
    if sent:
        logger.warning("Sweep: heat maps requested again for predictions %s", sent)
    return len(sent)


def enqueue_heatmap(prediction_id):
    """Send the message that computes a prediction's heat map again (sent by
    name: the web process never imports the task module's ml side)."""
    from celery import current_app

    try:
        current_app.send_task("diagnosis.retry_heatmap", (prediction_id,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:  # broker down: the next sweep sends it again
        logger.exception("Could not queue the heat map of prediction %s", prediction_id)
        return False
    return True


# --------------------------------------------------------------------------
# Case state
# --------------------------------------------------------------------------
def refresh_case(case):
    """Recompute a case's status and suggested stage from its smears. Locks
    the case row so concurrent workers serialise their updates."""
    return _refresh_case_by_id(case.pk)


def _refresh_case_by_id(case_id):
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        counts = case.smear_counts()
        if counts[Smear.Status.QUEUED] or counts[Smear.Status.PROCESSING]:
            status = Case.Status.PROCESSING
        elif counts[Smear.Status.FAILED]:
            status = Case.Status.ATTENTION
        elif counts[Smear.Status.DONE]:
            status = Case.Status.DONE
        else:
            status = Case.Status.EMPTY
        stage, confidence, _ = case.compute_suggestion()
        Case.objects.filter(pk=case.pk).update(
            status=status, suggested_stage=stage or "", suggested_confidence=confidence, updated_at=timezone.now()
        )
        previous_status = case.status
        case.status, case.suggested_stage, case.suggested_confidence = status, stage or "", confidence
        notifications.case_refreshed(case, previous_status)
    return case


def _smear_status_item(smear, can_retry):
    prediction = getattr(smear, "prediction", None)
    return {
        "id": smear.pk,
        "status": smear.status,
        "status_display": smear.get_status_display(),
        "error": smear.error,
        "attempts": smear.attempts,
        "can_retry": can_retry and smear.can_retry,
        "kind": smear.kind,
        # "stage" is the model's label for either kind (a stage, or blast/normal).
        "stage": prediction.label if prediction else None,
        "stage_display": prediction.label_display if prediction else None,
        "probabilities": dict(prediction.ordered_probabilities()) if prediction else None,
        "threshold": prediction.threshold if prediction else None,
        "model": f"{prediction.model_name} {prediction.model_version}" if prediction else None,
        "in_domain": prediction.in_domain if prediction else None,
        "domain_score": prediction.domain_score if prediction else None,
        "domain_reason": prediction.domain_reason if prediction else "",
        "not_assessable": smear.not_assessable,
        "not_assessable_reason": smear.not_assessable_reason,
    }


def smears_status_payload(smears, user):
    """Status JSON for any set of smears (the technician's upload queue)."""
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(s, can_retry) for s in smears.select_related("prediction").order_by("-created_at", "-pk")]
    return {
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def case_status_payload(case, user):
    """The JSON the case page polls while smears are being classified."""
    smears = case.smears.select_related("prediction").order_by("created_at", "pk")
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(smear, can_retry) for smear in smears]
    return {
        "case": case.pk,
        "status": case.status,
        "status_display": case.get_status_display(),
        "suggested_stage": case.suggested_stage or None,
        "suggested_stage_display": case.get_suggested_stage_display() if case.suggested_stage else None,
        "suggested_confidence": case.suggested_confidence,
        "screening": case.screening_summary(),
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def search_filter(q):
    return Q(accession_number__icontains=q) | Q(patient__lab_id__icontains=q)


# --------------------------------------------------------------------------
# Audit trail
# --------------------------------------------------------------------------
def record_event(case, action, *, actor=None, smear=None, old_value="", new_value="", reason="", model_version="",
                 detail=""):
    """Append one entry to a case's audit trail. The only writer of
    AuditEvent rows; call it inside the transaction of the change it records."""
    return AuditEvent.objects.create(
        case=case,
        smear=smear,
        action=action,
        actor=actor if actor is not None and getattr(actor, "is_authenticated", False) else None,
        old_value=str(old_value or "")[:255],
        new_value=str(new_value or "")[:255],
        reason=reason or "",
        model_version=(model_version or "")[:200],
        detail=detail or "",
    )


#: Fields of a case and a patient that people may edit (admin), each change audited.
CASE_EDITABLE_FIELDS = ("patient", "accession_number", "clinical_note")
PATIENT_EDITABLE_FIELDS = ("lab_id", "sex", "birth_year")


def _audit_value(obj, field):
    value = getattr(obj, field)
    if hasattr(obj, f"get_{field}_display"):
        return getattr(obj, f"get_{field}_display")()
    return "" if value is None else str(value)


def record_case_opened(case: Case, user) -> AuditEvent:
    """First entry of a case's audit trail: who opened it, for which patient,
    with which accession number and note. Call it in the transaction that
    creates the case (the case form and the admin do)."""
    return record_event(case, AuditEvent.Action.CASE_OPENED, actor=user, new_value=case.accession_number,
                        detail=f"Patient {case.patient.lab_id}; clinical note: {case.clinical_note!r}")


def update_case(case: Case, user, **changes) -> Case:
    """Change a case's own data (patient, accession number, clinical note),
    recording one audit event per changed field with before and after. A
    signed-out case is refused (CaseLocked): its data changes only through an
    addendum. Used by the admin; call it from a shell the same way."""
    unknown = set(changes) - set(CASE_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable on a case: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        locked = _lock_case(case)
        changed = []
        for field, value in changes.items():
            before = _audit_value(locked, field)
            setattr(locked, field, value)
            after = _audit_value(locked, field)
            if before != after:
                changed.append(field)
                record_event(locked, AuditEvent.Action.CASE_CHANGED, actor=user, old_value=before,
                             new_value=after, detail=f"{Case._meta.get_field(field).verbose_name}: {before!r} → {after!r}")
        if changed:
            locked.full_clean(validate_unique=True)
            locked.save(update_fields=[*changed, "updated_at"])
    case.refresh_from_db()
    return case


def update_patient(patient, user, **changes):
    """Change a patient's data, recording each changed field with before and
    after in the audit trail of every case of the patient. Signed-out reports
    keep the patient identifier they were signed with
    (Case.signed_out_patient_lab_id)."""
    from .models import Patient

    unknown = set(changes) - set(PATIENT_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable on a patient: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        cases = list(Case.objects.select_for_update().filter(patient=patient).order_by("pk"))
        locked = Patient.objects.select_for_update().get(pk=patient.pk)
        changed = []
        for field, value in changes.items():
            before = _audit_value(locked, field)
            setattr(locked, field, value)
            after = _audit_value(locked, field)
            if before != after:
                changed.append(field)
                label = Patient._meta.get_field(field).verbose_name
                for case in cases:
                    record_event(case, AuditEvent.Action.PATIENT_CHANGED, actor=user, old_value=before,
                                 new_value=after, detail=f"Patient {label}: {before!r} → {after!r}")
        if changed:
            locked.full_clean(validate_unique=True)
            locked.save(update_fields=changed)
    patient.refresh_from_db()
    return patient


# --------------------------------------------------------------------------
# Pathologist review
# --------------------------------------------------------------------------
class ReviewError(ValueError):
    """A review action that the rules refuse; str() is shown to the user."""


class CaseLocked(ReviewError):
    pass


class ReviewConflict(ReviewError):
    """Someone else reviewed the smear after this form was shown."""


def labels_for_smear(smear):
    """The labels a pathologist may give this smear: the label set of the
    model that classified it (in the model's order)."""
    prediction = getattr(smear, "prediction", None)
    if prediction is None:
        return ()
    return prediction.labels


def labels_for_case(case):
    """Labels allowed as the final stage: the union of the label sets of the
    case's classified blood-smear fields (staging model), in model order.
    Single cells never give a stage: their result is the screening summary."""
    labels = []
    for prediction in Prediction.objects.filter(
        smear__case=case, smear__status=Smear.Status.DONE, smear__kind=Smear.Kind.FIELD
    ):
        labels += [label for label in prediction.labels if label not in labels]
    return tuple(labels)


def label_display(label):
    return _label_display(label)


def check_length(text: str, limit: int, what: str) -> str:
    """The text, or ReviewError when it is longer than the field allows
    (every free text is bounded; the message says the limit)."""
    if len(text) > limit:
        raise ReviewError(f"{what} is {len(text):,} characters long; the limit is {limit:,} characters.")
    return text


def _lock_case(case):
    locked = Case.objects.select_for_update().get(pk=case.pk)
    if locked.is_signed_out:
        raise CaseLocked(
            f"Case {locked.accession_number} was signed out on {format_when(locked.signed_out_at)}; "
            "changes now go through an addendum."
        )
    return locked


def review_smear(smear, user, label, reason="", *, expected_version=None):
    """Confirm (label == the model's) or reclassify one smear. A reason is
    required when the label differs from the model's. Refused once the case
    is signed out. `expected_version` is the smear's review_version the form
    showed: when another review was saved since, ReviewConflict is raised
    instead of silently overwriting it (optimistic locking). Returns the
    audit event."""
    reason = check_length((reason or "").strip(), REVIEW_REASON_MAX_LENGTH, "The reason")
    with transaction.atomic():
        case = _lock_case(smear.case)
        smear = Smear.objects.select_for_update().select_related("prediction").get(pk=smear.pk)
        if smear.status != Smear.Status.DONE or not hasattr(smear, "prediction"):
            raise ReviewError("Only a classified smear can be reviewed.")
        if expected_version is not None and expected_version != smear.review_version:
            who = smear.reviewed_by.email if smear.reviewed_by else "someone else"
            raise ReviewConflict(
                f"{who} reviewed this smear meanwhile (now “{label_display(smear.review_label)}”); "
                "your change was not saved. Look at the current review and submit again if needed."
            )
        allowed = labels_for_smear(smear)
        if label not in allowed:
            raise ReviewError(f"“{label}” is not a label of this smear's model ({', '.join(allowed)}).")
        if smear.not_assessable:
            raise ReviewError("This smear is marked not assessable; mark it assessable again to label it.")
        model_label = smear.prediction.label
        # Outside its domain the model made no suggestion: there is nothing to confirm or to argue against.
        if label != model_label and not reason and smear.prediction.in_domain:
            raise ReviewError("A reason is required when you change the model's label.")
        previous = smear.review_label or model_label
        smear.review_label, smear.review_reason = label, reason
        smear.reviewed_by, smear.reviewed_at = user, timezone.now()
        smear.review_version += 1
        smear.save(update_fields=["review_label", "review_reason", "reviewed_by", "reviewed_at", "review_version",
                                  "updated_at"])
        action = AuditEvent.Action.CONFIRM if label == model_label else AuditEvent.Action.OVERRIDE
        return record_event(
            case, action, actor=user, smear=smear, old_value=previous, new_value=label, reason=reason,
            model_version=f"{smear.prediction.model_name} {smear.prediction.model_version}".strip(),
        )


NOT_ASSESSABLE_REASON_MAX = 500


def mark_not_assessable(smear, user, reason):
    """Mark a classified or failed smear "not assessable" (a reason is required). It then counts nowhere:
    not in the suggestion, the screening summary, sign-out requirements, report counts or the export.
    Refused once the case is signed out. Returns the audit event."""
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("Say why the smear is not assessable.")
    if len(reason) > NOT_ASSESSABLE_REASON_MAX:
        raise ReviewError(f"The reason is limited to {NOT_ASSESSABLE_REASON_MAX} characters.")
    with transaction.atomic():
        case = _lock_case(smear.case)
        smear = Smear.objects.select_for_update().get(pk=smear.pk)
        if smear.status not in (Smear.Status.DONE, Smear.Status.FAILED):
            raise ReviewError("Only a classified or failed smear can be marked not assessable.")
        if smear.not_assessable:
            raise ReviewError("This smear is already marked not assessable.")
        smear.not_assessable, smear.not_assessable_reason = True, reason
        smear.not_assessable_by, smear.not_assessable_at = user, timezone.now()
        smear.save(update_fields=["not_assessable", "not_assessable_reason", "not_assessable_by", "not_assessable_at",
                                  "updated_at"])
        event = record_event(case, AuditEvent.Action.NOT_ASSESSABLE, actor=user, smear=smear,
                             old_value=smear.review_label or "", new_value="not assessable", reason=reason)
        _refresh_case_by_id(case.pk)
    return event


def mark_assessable(smear, user, reason=""):
    """Undo "not assessable" before sign-out (audited); the smear needs a review again."""
    with transaction.atomic():
        case = _lock_case(smear.case)
        smear = Smear.objects.select_for_update().get(pk=smear.pk)
        if not smear.not_assessable:
            raise ReviewError("This smear is not marked not assessable.")
        previous = smear.not_assessable_reason
        smear.not_assessable, smear.not_assessable_reason = False, ""
        smear.not_assessable_by, smear.not_assessable_at = None, None
        smear.save(update_fields=["not_assessable", "not_assessable_reason", "not_assessable_by", "not_assessable_at",
                                  "updated_at"])
        event = record_event(case, AuditEvent.Action.ASSESSABLE, actor=user, smear=smear,
                             old_value="not assessable", new_value="assessable",
                             reason=(reason or "").strip() or f"was: {previous}")
        _refresh_case_by_id(case.pk)
    return event


def confirm_remaining(case: Case, user) -> list:
    """Confirm the model's label on every classified smear of the case that
    nobody has reviewed yet ("confirm all remaining"). Each smear goes
    through review_smear, so each gets its own audit event, exactly as if
    confirmed one by one; smears already reviewed keep their label. All or
    nothing: refused as a whole (CaseLocked) once the case is signed out.
    Returns the audit events, in smear order."""
    with transaction.atomic():
        _lock_case(case)
        return [review_smear(smear, user, smear.prediction.label) for smear in confirmable_smears(case)]


def confirmable_smears(case: Case) -> list:
    """The smears "confirm all remaining" would confirm: classified, not yet
    reviewed, and with a suggestion to confirm. A smear outside the model's
    domain (its prediction's domain check says no suggestion) or marked not
    assessable is left for the pathologist to judge one by one; getattr keeps
    this working whether or not those fields exist on this branch."""
    remaining = case.smears.filter(status=Smear.Status.DONE, review_label="", prediction__isnull=False)
    return [
        smear for smear in remaining.select_related("prediction", "case").order_by("created_at", "pk")
        if getattr(smear.prediction, "in_domain", True) and not getattr(smear, "not_assessable", False)
    ]


def next_case_in_queue(after: Case | None = None) -> Case | None:
    """The oldest case awaiting review (every smear classified, not signed
    out), other than `after`: where a pathologist goes after a sign-out."""
    cases = Case.objects.filter(status=Case.Status.DONE, signed_out_at__isnull=True).order_by("created_at", "pk")
    if after is not None:
        cases = cases.exclude(pk=after.pk)
    return cases.first()


def set_final_stage(case, user, final_stage, comment=""):
    """Set (before sign-out) the case's final stage and the comment."""
    with transaction.atomic():
        locked = _lock_case(case)
        _set_final_stage(locked, user, final_stage, comment)
    case.refresh_from_db()
    return case


def _set_final_stage(case, user, final_stage, comment):
    """The final stage is a staging label. A case with no blood-smear field
    (single cells only) has no stage: its final stage stays empty and its
    result is the reviewed screening summary."""
    comment = check_length((comment or "").strip(), REVIEW_COMMENT_MAX_LENGTH, "The comment")
    allowed = labels_for_case(case)
    if not case.has_field_smears():
        if final_stage:
            raise ReviewError("This case has only single cells: it has no stage; its result is the screening summary.")
    elif final_stage not in allowed:
        raise ReviewError(f"Choose a final stage among {', '.join(allowed) or '(no classified smear)'}.")
    if final_stage != case.final_stage:
        record_event(case, AuditEvent.Action.FINAL_STAGE, actor=user, old_value=case.final_stage,
                     new_value=final_stage, reason=comment)
    case.final_stage, case.review_comment = final_stage, comment or ""
    case.save(update_fields=["final_stage", "review_comment", "updated_at"])


def sign_out_problems(case):
    """Why a case cannot be signed out yet (empty list: it can)."""
    problems = []
    # Smears marked not assessable need nothing more: they are left out of every requirement.
    assessable = case.smears.filter(not_assessable=False)
    counts = {s: assessable.filter(status=s).count() for s in Smear.Status.values}
    if counts[Smear.Status.QUEUED] or counts[Smear.Status.PROCESSING]:
        problems.append("some smears are still being classified")
    if counts[Smear.Status.FAILED]:
        problems.append("some smears failed classification (retry them or mark them not assessable)")
    if not counts[Smear.Status.DONE]:
        problems.append("no assessable smear has been classified")
    unreviewed = assessable.filter(status=Smear.Status.DONE, review_label="").count()
    if unreviewed:
        problems.append(f"{unreviewed} smear(s) not yet confirmed, reclassified or marked not assessable")
    return problems


def sign_out(case, user, final_stage, comment=""):
    """Sign the case out with its final stage. Any pathologist (sign_out_case
    permission) may sign out any case; the signer is recorded. The case is
    locked afterwards: further changes go through add_addendum()."""
    with transaction.atomic():
        locked = _lock_case(case)
        problems = sign_out_problems(locked)
        if problems:
            raise ReviewError("The case cannot be signed out yet: " + "; ".join(problems) + ".")
        _set_final_stage(locked, user, final_stage, comment)
        now = timezone.now()
        locked.signed_out_by, locked.signed_out_at, locked.signed_out_stage = user, now, final_stage
        # Snapshot of the signer and the identifiers as signed: later account or
        # patient edits never change what was signed.
        locked.signed_out_by_name = (user.get_full_name() or user.email)[:255]
        locked.signed_out_by_email = user.email
        locked.signed_out_patient_lab_id = locked.patient.lab_id
        locked.save(update_fields=["signed_out_by", "signed_out_at", "signed_out_stage", "signed_out_by_name",
                                   "signed_out_by_email", "signed_out_patient_lab_id", "updated_at"])
        record_event(locked, AuditEvent.Action.SIGN_OUT, actor=user, new_value=final_stage, reason=comment,
                     detail=screening_summary_text(locked))
    case.refresh_from_db()
    return case


def add_addendum(case, user, text, new_final_stage=""):
    """Append an addendum to a signed-out case, optionally changing the final
    stage. The original sign-out (signed_out_stage, signer, time) and earlier
    addenda are kept."""
    text = check_length((text or "").strip(), ADDENDUM_MAX_LENGTH, "The addendum")
    if not text:
        raise ReviewError("An addendum needs a text.")
    with transaction.atomic():
        locked = Case.objects.select_for_update().get(pk=case.pk)
        if not locked.is_signed_out:
            raise ReviewError("Addenda are for signed-out cases; change the review directly instead.")
        if new_final_stage and new_final_stage not in labels_for_case(locked):
            raise ReviewError(f"“{new_final_stage}” is not a label of this case's model.")
        changes = bool(new_final_stage) and new_final_stage != locked.final_stage
        addendum = CaseAddendum.objects.create(
            case=locked, text=text, author=user,
            new_final_stage=new_final_stage if changes else "",
            previous_final_stage=locked.final_stage,
        )
        record_event(
            locked, AuditEvent.Action.ADDENDUM, actor=user, reason=text,
            old_value=locked.final_stage if changes else "", new_value=new_final_stage if changes else "",
        )
        if changes:
            locked.final_stage = new_final_stage
            locked.save(update_fields=["final_stage", "updated_at"])
    case.refresh_from_db()
    return addendum


def screening_summary_text(case, reviewed=True):
    """One line for the audit trail and reports; empty when no cell."""
    summary = case.screening_summary()
    if not summary["cells"]:
        return ""
    if reviewed and not summary["reviewed"]:
        return "Single-cell screening, pathologist: no cell reviewed yet."
    if reviewed:
        frac = summary["reviewed_fraction"]
        return (f"Single-cell screening, pathologist: {summary['reviewed_blasts']} of {summary['reviewed']} "
                f"reviewed cells blast ({frac:.0%}).")
    frac = summary["flagged_fraction"]
    pct = f" ({frac:.0%})" if frac is not None else ""
    text = f"Single-cell screening, model: {summary['flagged']} of {summary['screened']} cells flagged by the screen{pct}."
    if summary["outside_domain"]:
        text += f" {summary['outside_domain']} cell(s) outside the model's domain (not screened)."
    return text


# --------------------------------------------------------------------------
# Work queue
# --------------------------------------------------------------------------
@dataclass
class QueueEntry:
    case: Case
    n_smears: int
    min_confidence: float
    stages: list
    low_confidence: bool
    disagreement: bool
    reviewed: int
    n_cells: int = 0
    blasts_flagged: int = 0
    outside_domain: int = 0  # smears the model could not judge: the pathologist must look at them

    @property
    def flagged(self):
        return self.low_confidence or self.disagreement or bool(self.outside_domain)


def review_queue(threshold=None):
    """Cases awaiting review, oldest first: every smear classified (case
    status done) and not signed out. Each entry carries the lowest smear
    confidence and the flags: low confidence (a blood-smear field below
    REVIEW_LOW_CONFIDENCE_THRESHOLD) and disagreement (fields predicted as
    different stages), plus the number of single cells and of cells the
    screening model flagged as blasts. (A cell's confidence is not a useful
    flag: the screening threshold is deliberately low for sensitivity.)"""
    threshold = settings.REVIEW_LOW_CONFIDENCE_THRESHOLD if threshold is None else threshold
    cases = (
        Case.objects.filter(status=Case.Status.DONE, signed_out_at__isnull=True)
        .select_related("patient", "created_by")
        .prefetch_related("smears__prediction")
        .order_by("created_at", "pk")
    )
    entries = []
    for case in cases:
        done = [s for s in case.smears.all()
                if s.status == Smear.Status.DONE and hasattr(s, "prediction") and not s.not_assessable]
        if not done:
            continue
        outside = [s for s in done if not s.prediction.in_domain]
        fields = [s.prediction for s in done if s.kind == Smear.Kind.FIELD and s.prediction.in_domain]
        cells = [s.prediction for s in done if s.kind == Smear.Kind.CELL and s.prediction.in_domain]
        confidences = [p.confidence for p in fields]
        stages = sorted({p.label for p in fields})
        entries.append(
            QueueEntry(
                case=case,
                n_smears=len(done),
                min_confidence=min(confidences) if confidences else None,
                stages=stages,
                low_confidence=bool(confidences) and min(confidences) < threshold,
                disagreement=len(stages) > 1,
                reviewed=sum(1 for s in case.smears.all() if s.review_label),
                n_cells=len(cells),
                blasts_flagged=sum(1 for p in cells if p.label == CellLabel.BLAST),
                outside_domain=len(outside),
            )
        )
    return entries


# --------------------------------------------------------------------------
# Learning from review: agreement and export
# --------------------------------------------------------------------------
def reviewed_smears():
    """Smears with a pathologist label in signed-out cases (the labels that
    are final), with their predictions."""
    return (
        Smear.objects.filter(case__signed_out_at__isnull=False, status=Smear.Status.DONE, not_assessable=False)
        .exclude(review_label="")
        .filter(prediction__isnull=False)
        .select_related("prediction", "case", "reviewed_by")
        .order_by("case__signed_out_at", "pk")
    )


def agreement_stats(smears=None, kind=None):
    """Agreement between the model and the pathologists on reviewed smears,
    and the confusion matrix (rows: model label, columns: final label).
    `kind` (Smear.Kind) keeps one model's smears only; the dashboard shows
    one matrix per model kind."""
    smears = list(reviewed_smears() if smears is None else smears)
    if kind is not None:
        smears = [s for s in smears if s.kind == kind]
    # The model made no suggestion for an image outside its domain: nothing to agree or disagree with.
    outside = sum(1 for s in smears if not s.prediction.in_domain)
    smears = [s for s in smears if s.prediction.in_domain]
    labels = []
    for smear in smears:
        labels += [label for label in smear.prediction.labels if label not in labels]
    matrix = {m: {f: 0 for f in labels} for m in labels}
    agree = 0
    for smear in smears:
        matrix[smear.prediction.label][smear.review_label] = matrix[smear.prediction.label].get(smear.review_label, 0) + 1
        agree += smear.prediction.label == smear.review_label
    return {
        "n": len(smears),
        "agree": agree,
        "agreement": agree / len(smears) if smears else None,
        "outside_domain": outside,
        "labels": labels,
        "matrix": [(m, [matrix[m].get(f, 0) for f in labels]) for m in labels],
    }


def agreement_by_kind(smears=None):
    """agreement_stats() per model kind: [(kind, kind display, stats)]."""
    smears = list(reviewed_smears() if smears is None else smears)
    return [(kind.value, kind.label, agreement_stats(smears, kind)) for kind in Smear.Kind]


EXPORT_CSV = "labels.csv"
EXPORT_COLUMNS = ["file", "final_label", "model_label", "model_in_domain", "model_version", "reviewer", "case_accession",
                  "sha256"]
#: Export subfolder and class folders (always created) per smear kind.
EXPORT_LAYOUT = {
    Smear.Kind.FIELD: ("staging", tuple(Stage.values)),
    Smear.Kind.CELL: ("screening", tuple(CellLabel.values)),
}


def safe_name_part(text: str) -> str:
    """A piece of a file name or header built from user-typed text: anything
    outside letters, digits, dot, hyphen and underscore becomes "_", and no
    leading dot (so "..", "/" and newlines can never appear)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", str(text))[:64].lstrip(".")
    return cleaned or "_"


def _inside(folder, relative):
    """folder/relative, refused unless it resolves inside folder."""
    from pathlib import Path

    folder = Path(folder).resolve()
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(f"Refusing to write {relative!r} outside the export folder.")
    return target


def export_reviewed(dest, smears=None):
    """Write every reviewed smear of signed-out cases (confirmed or changed by
    the pathologist) into DEST/staging/<final stage>/ (blood-smear fields) and
    DEST/screening/<blast|normal>/ (single cells), each subfolder with its
    own labels.csv and directly usable as `python -m ml train --data
    DEST/staging` (or DEST/screening). DEST must be empty or absent.
    Returns the number of images written."""
    import csv
    from pathlib import Path

    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise ValueError(f"{dest} is not empty; export into a new folder.")
    dest.mkdir(parents=True, exist_ok=True)
    smears = list(reviewed_smears() if smears is None else smears)
    rows = {kind: [] for kind in EXPORT_LAYOUT}
    for sub, labels in EXPORT_LAYOUT.values():
        for label in labels:  # the model's classes always exist, even when empty
            (dest / sub / label).mkdir(parents=True, exist_ok=True)
    for smear in smears:
        sub, labels = EXPORT_LAYOUT[smear.kind]
        if smear.review_label not in labels:  # never a path component that is not a known class
            raise ValueError(f"Smear {smear.pk} has the unknown label {smear.review_label!r}; not exported.")
        suffix = IMAGE_FORMAT_FILES.get(smear.image_format, (".img",))[0]
        relative = f"{smear.review_label}/{safe_name_part(smear.case.accession_number)}-{smear.pk}{suffix}"
        target = _inside(dest / sub, relative)
        with smear.image.open("rb") as src, open(target, "xb") as out:
            for chunk in src.chunks():
                out.write(chunk)
        rows[smear.kind].append(
            [
                relative, smear.review_label, smear.prediction.label, int(smear.prediction.in_domain),
                f"{smear.prediction.model_name} {smear.prediction.model_version}".strip(),
                smear.reviewed_by.email if smear.reviewed_by else "", smear.case.accession_number, smear.sha256,
            ]
        )
    for kind, (sub, _) in EXPORT_LAYOUT.items():
        with open(dest / sub / EXPORT_CSV, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(EXPORT_COLUMNS)
            writer.writerows(rows[kind])
    return sum(len(r) for r in rows.values())
