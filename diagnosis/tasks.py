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

    from leukportal.celery import apply_worker_threads

    from .models import Smear

    apply_worker_threads()  # ml may just have imported PyTorch: its threads follow the worker's share
    if kind == Smear.Kind.CELL:
        return ml.load_predictor("screening")
    return ml.load_predictor()


@shared_task(name="diagnosis.classify_smear", ignore_result=True)
def classify_smear(smear_id):
    """One message per uploaded smear; each claims its smear and up to
    SMEAR_BATCH_SIZE - 1 other queued smears of its kind (services.claim_batch)
    and classifies them in one forward pass, so a burst of uploads becomes a
    few passes and the later messages of the burst find their smears taken.
    Returns what became of the message's own smear: "done", "failed",
    "skipped" (already claimed or finished: a duplicate message) or "dropped"
    (no longer processing when its result came, e.g. re-queued by the sweep)."""
    smears = services.claim_batch(smear_id, limit=settings.SMEAR_BATCH_SIZE)
    if not smears:
        logger.info("Smear %s not claimable (already claimed, finished or deleted); skipping", smear_id)
        return "skipped"
    outcomes = classify_claimed(smears)
    return outcomes.get(smear_id, "dropped")  # dropped: no longer processing when its result came


def classify_claimed(smears):
    """Classify claimed smears of one kind; returns {smear_id: "done" | "failed"}.
    Every prediction of the batch is recorded before any heat map is queued."""
    outcomes = {}
    predictions = {}
    try:
        predictor = load_predictor_for(smears[0].kind)
        started = time.perf_counter()
        results, failures = predict_each(predictor, smears)
        latency_ms = (time.perf_counter() - started) * 1000 / max(1, len(results))  # this image's share of the pass
        for smear_id, reason in failures.items():
            services.mark_failed(smear_id, reason)
            outcomes[smear_id] = "failed"
        predictions, invalid = services.record_predictions(results, latency_ms=latency_ms)
        outcomes.update({smear_id: "done" for smear_id in predictions})
        outcomes.update({smear_id: "failed" for smear_id in invalid})
    except SoftTimeLimitExceeded:
        _fail_unfinished(smears, outcomes, f"Classification took longer than the {settings.CELERY_TASK_SOFT_TIME_LIMIT} s "
                                           "time limit.")
    except Exception as exc:
        reason = _readable_reason(exc)
        logger.exception("Classification of smears %s failed: %s", [s.pk for s in smears], reason)
        # A deadlock or lock timeout that outlived the writers' own retries:
        # the sweep queues the smears again by itself.
        _fail_unfinished(smears, outcomes, reason, transient=services.is_transient_db_error(exc))
    # No heat map for an image outside the model's domain: it would explain an answer the portal does not give.
    for prediction in predictions.values():
        if prediction.in_domain:
            services.enqueue_heatmap(prediction)
    prepare_displays([smear for smear in smears if outcomes.get(smear.pk) == "done"])
    return outcomes


#: Seconds a classification task spends on renditions after its predictions (a 40-megapixel TIFF takes ~5 s); the
#: rest are made on first view. Keeps a batch of large TIFFs well inside the task's time limit.
RENDITION_BUDGET_S = 30


def prepare_displays(smears):
    """The browser's renditions of TIFF (or 16-bit, transparent, CMYK) smears, made here rather than in the web
    process on their first view, within RENDITION_BUDGET_S; a failure is logged and the view makes it later.
    The predictions are stored: nothing here may undo or fail them."""
    started = time.perf_counter()
    for smear in smears:
        if time.perf_counter() - started > RENDITION_BUDGET_S:
            logger.info("Renditions of smears from %s on left to their first view (time budget spent)", smear.pk)
            return
        try:
            services.prepare_displayed_image(smear)
        except SoftTimeLimitExceeded:
            logger.warning("Soft time limit reached while making renditions; the rest are left to their first view")
            return
        except Exception:
            logger.exception("Smear %s: its display rendition could not be made now; the first view will try",
                             smear.pk)


def _fail_unfinished(smears, outcomes, reason, transient=False):
    for smear in smears:
        if smear.pk not in outcomes:
            services.mark_failed(smear.pk, reason, transient=transient)
            outcomes[smear.pk] = "failed"


def predict_each(predictor, smears):
    """({smear_id: result}, {smear_id: reason}) for a batch: one predict call
    for all images; when it raises, each image again on its own, so only the
    images that fail fail. Results are matched to smears by id: each id
    travels in one list with its own image."""
    sources, failures = [], {}
    for smear in smears:
        try:
            sources.append((smear.pk, _image_source(smear)))
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:  # e.g. the file is missing from the storage
            logger.warning("Smear %s: its image could not be opened", smear.pk, exc_info=exc)
            failures[smear.pk] = _readable_reason(exc)
    if not sources:
        return {}, failures
    try:
        return _predict(predictor, sources), failures
    except SoftTimeLimitExceeded:
        raise
    except Exception as exc:
        if len(sources) == 1:
            logger.warning("Smear %s failed classification", sources[0][0], exc_info=exc)
            failures[sources[0][0]] = _readable_reason(exc, sources[0][1])
            return {}, failures
        logger.warning("Batch of %s smears failed (%s); predicting them one by one", len(sources), exc)
    results = {}
    for smear_id, source in sources:
        try:
            results.update(_predict(predictor, [(smear_id, source)]))
        except SoftTimeLimitExceeded:
            raise
        except Exception as exc:
            logger.warning("Smear %s failed classification", smear_id, exc_info=exc)
            failures[smear_id] = _readable_reason(exc, source)
    return results, failures


def _predict(predictor, sources):
    results = predictor.predict([source for _, source in sources])
    if len(results) != len(sources):
        raise services.InvalidModelOutput(f"the model returned {len(results)} results for {len(sources)} images.")
    return {smear_id: result for (smear_id, _), result in zip(sources, results)}


def make_heatmap(prediction, predictor, smear):
    """Heat map overlay for the stored prediction's label: the greedy deletion map of
    `ml.explain.heatmap`, chosen because blurring its hot region costs the
    class far more than blurring its cold one, and more than single-window
    occlusion's hot region (the deletion test in ml/README.md). Any failure (including the soft time limit) is logged
    and recorded on the prediction as "heat map unavailable"; the prediction
    itself is already committed and stays."""
    try:
        import io

        from ml.explain import heatmap, overlay

        source = _image_source(smear)
        heat = heatmap(predictor, source, target=prediction.label)  # explains the stored label
        buf = io.BytesIO()
        overlay(source, heat, framing=getattr(predictor, "framing", "none")).convert("RGB").save(buf, "JPEG", quality=88)
        # None: the case was signed out meanwhile and the signed report keeps what was seen
        return services.store_heatmap(prediction.pk, buf.getvalue(), prediction.label) is not None
    except Exception as exc:  # SoftTimeLimitExceeded is an Exception too
        logger.exception("Heat map for smear %s failed; the prediction is kept", smear.pk)
        services.heatmap_failed(prediction.pk, f"Heat map unavailable: {services.failure_words(exc)}.")
        return False


def _readable_reason(exc, source=None):
    """Why a smear failed, for the technician: the model's own sentence about the image (the stored file's
    server path taken out), or what failed without the exception's text (paths, storage or SQL details);
    the callers log the whole exception."""
    image_error = None
    try:
        import ml

        image_error = ml.ImageError
    except Exception:  # ml itself failed to import: the generic reason says so
        pass
    if image_error is not None and isinstance(exc, image_error):
        text = str(exc).replace(source, "the stored image") if isinstance(source, str) and source else str(exc)
        return f"The image could not be read by the model: {text}"
    if isinstance(exc, services.InvalidModelOutput):
        return f"Classification failed: {exc}"
    if services.is_transient_db_error(exc):
        return "Temporary database error; the smear will be queued again automatically."
    return f"Classification failed: {services.failure_words(exc)}. The details are in the worker's log."


@shared_task(name="diagnosis.sweep_stale_smears", ignore_result=True)
def sweep_stale_smears():
    counts = services.sweep_stale_smears()
    services.resend_lost_heatmaps()  # heat maps lost with their worker (it logs what it sends)
    services.tidy_exports()  # lost exports failed, old zips deleted
    return counts


@shared_task(name="diagnosis.build_export", ignore_result=True,
             soft_time_limit=settings.EXPORT_TIME_LIMIT_SECONDS, time_limit=settings.EXPORT_TIME_LIMIT_SECONDS + 30)
def build_export(export_id):
    """Zip the reviewed-smear export a user asked for (services.build_export)."""
    return "done" if services.build_export(export_id) is not None else "skipped or failed"


@shared_task(name="diagnosis.compute_heatmap", ignore_result=True)
def compute_heatmap(prediction_id):
    """Compute the heat map of a stored prediction (queued by the worker once
    its batch is recorded, or again by the sweep when it was lost). Does
    nothing when it was stored or failed meanwhile (a duplicate message), or
    when workers died on it SMEAR_MAX_ATTEMPTS times (services.claim_heatmap)."""
    prediction = services.claim_heatmap(prediction_id)
    if prediction is None:
        return "skipped"
    try:
        predictor = load_predictor_for(prediction.smear.kind)
    except Exception as exc:
        services.heatmap_failed(prediction.pk, f"Heat map unavailable: {services.failure_words(exc)}.")
        return "failed"
    return "done" if make_heatmap(prediction, predictor, prediction.smear) else "failed"


@shared_task(name="diagnosis.retry_heatmap", ignore_result=True)
def retry_heatmap(prediction_id):
    """The former name of compute_heatmap, for messages sent before an upgrade."""
    return compute_heatmap(prediction_id)
