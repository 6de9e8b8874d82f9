"""Messages to the Celery workers. The only importer of diagnosis.tasks, and
only inside the functions: the task module imports `ml` lazily, so the web
process never loads PyTorch."""
import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def enqueue_classification(smear_id):
    """Send the classification message. If the broker is unreachable the
    smear simply stays queued: the periodic sweep sends it again later."""
    from ..tasks import classify_smear

    try:
        classify_smear.apply_async((smear_id,), queue=settings.CELERY_TASK_DEFAULT_QUEUE)
    except Exception:  # broker down: stored data is safe, the sweep re-sends
        logger.exception("Could not queue smear %s; the sweep will re-send it", smear_id)
        return False
    return True


def enqueue_heatmap(prediction_id):
    """Send the message that computes a prediction's heat map, on the heat-map
    queue (consumed by a low-priority worker of its own, so heat maps never
    delay a classification). Sent after the prediction committed, by the
    worker that made it, and again by the sweep when it was lost."""
    from ..tasks import compute_heatmap

    try:
        compute_heatmap.apply_async((prediction_id,), queue=settings.CELERY_HEATMAP_QUEUE)
    except Exception:  # broker down: the next sweep sends it again
        logger.exception("Could not queue the heat map of prediction %s", prediction_id)
        return False
    return True


def enqueue_export(export_id):
    """Send the message that zips a requested export, on the low-priority
    queue. If the broker is down the export stays queued until the sweep
    marks it failed; the user asks again."""
    from ..tasks import build_export

    try:
        build_export.apply_async((export_id,), queue=settings.CELERY_HEATMAP_QUEUE)
    except Exception:
        logger.exception("Could not queue export %s", export_id)
        return False
    return True
