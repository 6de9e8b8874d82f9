"""Celery tasks: the thin bridge between the portal and the `ml` package.

`ml` never imports Django; this module imports `ml` lazily so that the web
process never loads PyTorch.
"""
import logging
import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from . import services

logger = logging.getLogger(__name__)


def _image_source(smear):
    """A filesystem path when the storage has one, else an opened PIL image."""
    try:
        return smear.image.path
    except NotImplementedError:  # remote storage (e.g. S3)
        from PIL import Image

        with smear.image.open("rb") as fh:
            img = Image.open(fh)
            img.load()
        return img


def load_predictor_for(kind):
    """The model for a smear kind: the staging model for a blood-smear field,
    the single-cell screening model for a cell (both cached by ml)."""
    import ml

    from .models import Smear

    if kind == Smear.Kind.CELL:
        return ml.load_predictor("screening")
    return ml.load_predictor()


@shared_task(name="diagnosis.classify_smear", ignore_result=True)
def classify_smear(smear_id):
    smear = services.claim_smear(smear_id)
    if smear is None:
        logger.info("Smear %s not claimable (already claimed, finished or deleted); skipping", smear_id)
        return "skipped"
    try:
        predictor = load_predictor_for(smear.kind)
        started = time.perf_counter()
        result = predictor.predict([_image_source(smear)])[0]
        latency_ms = (time.perf_counter() - started) * 1000
        prediction = services.record_prediction(smear.pk, result, latency_ms)
    except SoftTimeLimitExceeded:
        services.mark_failed(
            smear.pk, f"Classification took longer than the {settings.CELERY_TASK_SOFT_TIME_LIMIT} s time limit."
        )
        return "failed"
    except Exception as exc:
        reason = _readable_reason(exc)
        logger.exception("Classification of smear %s failed: %s", smear.pk, reason)
        # A deadlock or lock timeout that outlived record_prediction's own
        # retries: the sweep queues the smear again by itself.
        services.mark_failed(smear.pk, reason, transient=services.is_transient_db_error(exc))
        return "failed"
    # No heat map for an image outside the model's domain: it would explain an answer the portal does not give.
    if prediction is not None and prediction.in_domain:
        make_heatmap(prediction, predictor, smear)
    return "done"


def make_heatmap(prediction, predictor, smear):
    """Heat map overlay for the stored prediction's label: the occlusion map of
    `ml.explain.heatmap`, chosen because blurring its hot region costs the
    class far more than blurring its cold one, where Grad-CAM's hot and cold
    regions cost the same (the deletion test in ml/README.md). Any failure (including the soft time limit) is logged
    and recorded on the prediction as "heat map unavailable"; the prediction
    itself is already committed and stays."""
    try:
        import io

        from ml.explain import heatmap, overlay

        source = _image_source(smear)
        heat = heatmap(predictor, source, target=prediction.label)  # explains the stored label
        buf = io.BytesIO()
        overlay(source, heat).convert("RGB").save(buf, "JPEG", quality=88)
        services.store_heatmap(prediction.pk, buf.getvalue(), prediction.label)
        return True
    except Exception as exc:  # SoftTimeLimitExceeded is an Exception too
        logger.exception("Heat map for smear %s failed; the prediction is kept", smear.pk)
        services.heatmap_failed(prediction.pk, f"Heat map unavailable: {type(exc).__name__}: {exc}")
        return False


def _readable_reason(exc):
    image_error = None
    try:
        import ml

        image_error = ml.ImageError
    except Exception:  # ml itself failed to import: the generic reason says so
        pass
    if image_error is not None and isinstance(exc, image_error):
        return f"The image could not be read by the model: {exc}"
    if isinstance(exc, services.InvalidModelOutput):
        return f"Classification failed: {exc}"
    if services.is_transient_db_error(exc):
        return f"Temporary database error ({exc}); the smear will be queued again automatically."
    return f"Classification failed: {type(exc).__name__}: {exc}"


@shared_task(name="diagnosis.sweep_stale_smears", ignore_result=True)
def sweep_stale_smears():
    counts = services.sweep_stale_smears()
    services.resend_lost_heatmaps()  # heat maps lost with their worker (it logs what it sends)
    return counts


@shared_task(name="diagnosis.retry_heatmap", ignore_result=True)
def retry_heatmap(prediction_id):
    """Compute the heat map of a prediction whose worker died while computing
    it (sent by the sweep). Does nothing when it was stored or failed meanwhile."""
    from .models import Prediction

    prediction = Prediction.objects.select_related("smear").filter(pk=prediction_id, heatmap="", heatmap_error="").first()
    if prediction is None:
        return "skipped"
    try:
        predictor = load_predictor_for(prediction.smear.kind)
    except Exception as exc:
        services.heatmap_failed(prediction.pk, f"Heat map unavailable: {type(exc).__name__}: {exc}")
        return "failed"
    return "done" if make_heatmap(prediction, predictor, prediction.smear) else "failed"
