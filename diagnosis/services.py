"""Domain rules of the diagnosis app, in one place.

Views, Celery tasks and the admin call these functions; none of them
re-implements a rule.
"""
import hashlib
import io
import logging
import math
import warnings
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image

from .models import PROBABILITY_FIELDS, Case, Prediction, Smear, Stage

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


def check_image(upload):
    """Validate one uploaded file as a smear image; return a CheckedImage or
    raise RejectedImage with a readable reason. Reads the whole file."""
    size = upload.size
    if size == 0:
        raise RejectedImage("the file is empty.")
    if size > settings.SMEAR_MAX_UPLOAD_BYTES:
        raise RejectedImage(
            f"the file is {_human_bytes(size)}; the limit is {_human_bytes(settings.SMEAR_MAX_UPLOAD_BYTES)}."
        )
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
                fmt, (width, height) = img.format, img.size
                if width * height > max_pixels:
                    raise RejectedImage(
                        f"the image is {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels."
                    )
                img.verify()  # structure and checksums (PNG CRCs, ...)
            upload.seek(0)
            with Image.open(upload, formats=list(ALLOWED_FORMATS)) as img:
                img.load()  # decodes every pixel: truncated data fails here
                thumb = img.convert("RGB")
                thumb.thumbnail(THUMBNAIL_SIZE)
                buf = io.BytesIO()
                thumb.save(buf, "JPEG", quality=85)
    except RejectedImage:
        raise
    except Image.UnidentifiedImageError:
        raise RejectedImage(f"this is not an image in an accepted format ({allowed}).") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RejectedImage(f"the image has more than the limit of {max_pixels:,} pixels.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
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


def add_smears(case, uploads, user):
    """Validate every file; store the valid ones (file + DB row) in one
    transaction, and queue one classification per smear only once that
    transaction has committed. Rejected files are returned with reasons;
    they never prevent the valid ones from being stored."""
    checked, rejected = [], []
    seen = dict(case.smears.values_list("sha256", "original_filename"))
    for upload in uploads:
        name = upload.name or "(unnamed file)"
        try:
            image = check_image(upload)
        except RejectedImage as exc:
            rejected.append((name, str(exc)))
            continue
        if image.sha256 in seen:
            rejected.append((name, f"the same image is already in this case (as “{seen[image.sha256]}”)."))
            continue
        seen[image.sha256] = name
        checked.append(image)

    accepted = []
    with transaction.atomic():
        Case.objects.select_for_update().filter(pk=case.pk).first()
        for image in checked:
            smear = Smear(
                case=case,
                sha256=image.sha256,
                width=image.width,
                height=image.height,
                image_format=image.image_format,
                size_bytes=image.size_bytes,
                original_filename=(image.upload.name or "")[:255],
                uploaded_by=user,
                status=Smear.Status.QUEUED,
            )
            smear.image.save(image.upload.name or "smear", image.upload, save=False)
            smear.thumbnail.save("thumb.jpg", ContentFile(image.thumbnail_jpeg), save=False)
            smear.save()
            accepted.append(smear)
            transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
        if accepted:
            refresh_case(case)
    return UploadOutcome(accepted=accepted, rejected=rejected)


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


def validate_result(result):
    """Check the predictor's dict; return (stage, {stage: probability})."""
    try:
        stage = Stage(result["stage"])
        probs = {s: float(result["probabilities"][s.value]) for s in Stage}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelOutput(f"the model returned an unexpected result ({exc!r}).") from None
    if not all(math.isfinite(p) and -1e-6 <= p <= 1 + 1e-6 for p in probs.values()):
        raise InvalidModelOutput("the model returned probabilities outside [0, 1].")
    if abs(sum(probs.values()) - 1.0) > 1e-3:
        raise InvalidModelOutput(f"the model's probabilities sum to {sum(probs.values()):.4f}, not 1.")
    return stage, probs


def record_prediction(smear_id, result, latency_ms):
    """Store the prediction of a smear this worker has claimed."""
    stage, probs = validate_result(result)
    with transaction.atomic():
        smear = Smear.objects.select_for_update().get(pk=smear_id)
        if smear.status != Smear.Status.PROCESSING:
            logger.warning("Smear %s is %s, not processing; prediction dropped", smear_id, smear.status)
            return None
        prediction = Prediction.objects.create(
            smear=smear,
            model_name=str(result.get("model", ""))[:100],
            model_version=str(result.get("model_version", ""))[:100],
            stage=stage,
            latency_ms=max(0, int(round(latency_ms))),
            **{PROBABILITY_FIELDS[s]: min(1.0, max(0.0, p)) for s, p in probs.items()},
        )
        smear.status = Smear.Status.DONE
        smear.error = ""
        smear.save(update_fields=["status", "error", "updated_at"])
        _refresh_case_by_id(smear.case_id)
    return prediction


def mark_failed(smear_id, reason):
    """Mark a claimed smear failed with a readable reason; nothing else in the
    case is touched, the image stays stored and the smear can be retried."""
    with transaction.atomic():
        updated = Smear.objects.filter(pk=smear_id, status=Smear.Status.PROCESSING).update(
            status=Smear.Status.FAILED, error=reason[:2000], updated_at=timezone.now()
        )
        if updated:
            _refresh_case_by_id(Smear.objects.values_list("case_id", flat=True).get(pk=smear_id))
    return bool(updated)


def retry_smear(smear):
    """Put a failed smear back in the queue. Returns False when it was not
    failed (e.g. someone else retried it already)."""
    with transaction.atomic():
        updated = Smear.objects.filter(pk=smear.pk, status=Smear.Status.FAILED).update(
            status=Smear.Status.QUEUED, claimed_at=None, updated_at=timezone.now()
        )
        if updated:
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
      again; a duplicate is harmless because of claim_smear.

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
            if smear.attempts >= max_attempts:
                reason = (
                    f"Classification did not finish after {smear.attempts} attempts "
                    "(the worker stopped or ran out of time each time)."
                )
                if still_stale.update(status=Smear.Status.FAILED, error=reason, updated_at=now):
                    failed.append(smear.pk)
                    _refresh_case_by_id(smear.case_id)
            elif still_stale.update(status=Smear.Status.QUEUED, claimed_at=None, updated_at=now):
                requeued.append(smear.pk)
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
        case.status, case.suggested_stage, case.suggested_confidence = status, stage or "", confidence
    return case


def case_status_payload(case, user):
    """The JSON the case page polls while smears are being classified."""
    smears = case.smears.select_related("prediction").order_by("created_at", "pk")
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = []
    for smear in smears:
        prediction = getattr(smear, "prediction", None)
        items.append(
            {
                "id": smear.pk,
                "status": smear.status,
                "status_display": smear.get_status_display(),
                "error": smear.error,
                "attempts": smear.attempts,
                "can_retry": can_retry and smear.can_retry,
                "stage": prediction.stage if prediction else None,
                "stage_display": prediction.get_stage_display() if prediction else None,
                "probabilities": prediction.probabilities if prediction else None,
                "model": f"{prediction.model_name} {prediction.model_version}" if prediction else None,
            }
        )
    return {
        "case": case.pk,
        "status": case.status,
        "status_display": case.get_status_display(),
        "suggested_stage": case.suggested_stage or None,
        "suggested_stage_display": case.get_suggested_stage_display() if case.suggested_stage else None,
        "suggested_confidence": case.suggested_confidence,
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def search_filter(q):
    return Q(accession_number__icontains=q) | Q(patient__lab_id__icontains=q)
