"""Messages to the Celery workers. The only importer of diagnosis.tasks, and
only inside the functions: the task module imports `ml` lazily, so the web
process never loads PyTorch."""
import logging

from django.conf import settings

from ..models import CellLabel

logger = logging.getLogger(__name__)

#: Heat-map message priorities. On Redis the heat-map worker takes every message of priority 0 before any of 6
#: (kombu serves its priority steps 0, 3, 6, 9 in that order; the filesystem broker ignores them). Exports are
#: sent without one, which is 0.
HEATMAP_PRIORITY_FIRST = 0
HEATMAP_PRIORITY_LATER = 6


def heatmap_priority(prediction):
    """The heat maps a pathologist opens come first: every field's, and a cell's that the screen flagged. A cell
    the screen let through waits behind them, so that a case of a few hundred cells (about 6 s of worker time
    each) does not hold back the maps of the cells that matter, in its own case or the next."""
    if prediction.is_screening and prediction.label != CellLabel.BLAST:
        return HEATMAP_PRIORITY_LATER
    return HEATMAP_PRIORITY_FIRST


def _send(task, object_id, queue, what, priority=None):
    """One message to the workers; False (logged) when the broker cannot be
    reached, so the caller's committed data stays and the sweep takes over."""
    try:
        task.apply_async((object_id,), queue=queue, priority=priority)
    except Exception:  # broker down: stored data is safe
        logger.exception("Could not queue %s %s", what, object_id)
        return False
    return True


def enqueue_classification(smear_id):
    """Send the classification message. If the broker is unreachable the
    smear simply stays queued: the periodic sweep sends it again later."""
    from ..tasks import classify_smear

    return _send(classify_smear, smear_id, settings.CELERY_TASK_DEFAULT_QUEUE, "smear")


def enqueue_heatmap(prediction):
    """Send the message that computes a prediction's heat map, on the heat-map
    queue (consumed by a low-priority worker of its own, so heat maps never
    delay a classification), at the prediction's heatmap_priority. Sent after
    the prediction committed, by the worker that made it, and again by the
    sweep when it was lost."""
    from ..tasks import compute_heatmap

    return _send(compute_heatmap, prediction.pk, settings.CELERY_HEATMAP_QUEUE, "the heat map of prediction",
                 priority=heatmap_priority(prediction))


def enqueue_export(export_id):
    """Send the message that zips a requested export, on the low-priority
    queue. If the broker is down the export stays queued until the sweep
    marks it failed; the user asks again."""
    from ..tasks import build_export

    return _send(build_export, export_id, settings.CELERY_HEATMAP_QUEUE, "export")
