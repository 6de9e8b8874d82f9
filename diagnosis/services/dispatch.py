"""Messages to the Celery workers. The only importer of diagnosis.tasks, and
only inside the functions: the task module imports `ml` lazily, so the web
process never loads PyTorch."""
import logging

from django.conf import settings

logger = logging.getLogger(__name__)


def _send(task, object_id, queue, what):
    """One message to the workers; False (logged) when the broker cannot be
    reached, so the caller's committed data stays and the sweep takes over."""
    try:
        task.apply_async((object_id,), queue=queue)
    except Exception:  # broker down: stored data is safe
        logger.exception("Could not queue %s %s", what, object_id)
        return False
    return True


def enqueue_classification(smear_id):
    """Send the classification message. If the broker is unreachable the
    smear simply stays queued: the periodic sweep sends it again later."""
    from ..tasks import classify_smear

    return _send(classify_smear, smear_id, settings.CELERY_TASK_DEFAULT_QUEUE, "smear")


def enqueue_heatmap(prediction_id):
    """Send the message that computes a prediction's heat map, on the heat-map
    queue (consumed by a low-priority worker of its own, so heat maps never
    delay a classification). Sent after the prediction committed, by the
    worker that made it, and again by the sweep when it was lost."""
    from ..tasks import compute_heatmap

    return _send(compute_heatmap, prediction_id, settings.CELERY_HEATMAP_QUEUE, "the heat map of prediction")


def enqueue_export(export_id):
    """Send the message that zips a requested export, on the low-priority
    queue. If the broker is down the export stays queued until the sweep
    marks it failed; the user asks again."""
    from ..tasks import build_export

    return _send(build_export, export_id, settings.CELERY_HEATMAP_QUEUE, "export")
