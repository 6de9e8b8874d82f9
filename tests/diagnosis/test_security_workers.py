"""Issue 13, item 5: workers finishing smears of one case at the same time.
Every writer locks the case row before the smear row (one lock order, so no
deadlock between them); a transaction the database still rolls back for a
deadlock or lock timeout is run again; a smear that failed for such a
temporary reason is queued again by the sweep."""
import pytest
from django.db import OperationalError
from django.db.models import QuerySet

from diagnosis import services
from diagnosis.models import AuditEvent, Case, Smear
from tests.review.conftest import result

pytestmark = pytest.mark.django_db

DEADLOCK = OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")


@pytest.fixture
def lock_order(monkeypatch):
    """The models whose rows are locked (select_for_update), in order."""
    order = []
    real = QuerySet.select_for_update

    def recording(self, *args, **kwargs):
        order.append(self.model.__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(QuerySet, "select_for_update", recording)
    return order


def test_record_prediction_locks_the_case_before_the_smear(smear_factory, lock_order):
    smear = smear_factory(status="processing")
    services.record_prediction(smear.pk, result("Pre"), 5)
    assert lock_order[:2] == ["Case", "Smear"]


@pytest.mark.parametrize("call", ["mark_failed", "retry_smear"])
def test_failing_and_retrying_lock_the_case_first(smear_factory, lock_order, call):
    smear = smear_factory(status="processing" if call == "mark_failed" else "failed")
    if call == "mark_failed":
        services.mark_failed(smear.pk, "boom")
    else:
        services.retry_smear(smear)
    assert lock_order[0] == "Case"


def test_review_locks_the_case_before_the_smear(smear_factory, pathologist, lock_order):
    smear = smear_factory(status="processing")
    services.record_prediction(smear.pk, result("Pre"), 5)
    lock_order.clear()
    services.review_smear(smear, pathologist, "Pre")
    assert lock_order[:2] == ["Case", "Smear"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # retried only outside an outer transaction
def test_deadlocked_record_prediction_is_run_again(smear_factory, monkeypatch):
    smear = smear_factory(status="processing")
    real_refresh, calls = services._refresh_case_by_id, []

    def deadlock_once(case_id):
        calls.append(case_id)
        if len(calls) == 1:
            raise DEADLOCK
        return real_refresh(case_id)

    monkeypatch.setattr(services.classification, "_refresh_case_by_id", deadlock_once)
    monkeypatch.setattr(services.transactions.time, "sleep", lambda s: None)
    prediction = services.record_prediction(smear.pk, result("Pre"), 5)
    assert prediction is not None and len(calls) == 2
    smear.refresh_from_db()
    assert smear.status == "done"
    # The rolled-back first attempt left nothing behind: one prediction event.
    assert AuditEvent.objects.filter(smear=smear, action="prediction").count() == 1


def test_an_error_that_is_not_transient_is_not_retried(smear_factory, monkeypatch):
    smear = smear_factory(status="processing")

    def broken(case_id):
        raise OperationalError(1054, "Unknown column")

    monkeypatch.setattr(services.classification, "_refresh_case_by_id", broken)
    with pytest.raises(OperationalError):
        services.record_prediction(smear.pk, result("Pre"), 5)


def test_persistent_deadlock_fails_the_smear_as_transient_and_the_sweep_queues_it_again(
    smear_factory, monkeypatch, sent_messages, django_capture_on_commit_callbacks
):
    from diagnosis.tasks import classify_smear
    from tests.diagnosis.test_diagnosis_tasks import FakePredictor

    smear = smear_factory(status="queued")
    monkeypatch.setattr("diagnosis.tasks.load_predictor_for", lambda kind: FakePredictor())
    monkeypatch.setattr("diagnosis.tasks._image_source", lambda smear: "unused")
    monkeypatch.setattr("diagnosis.tasks.make_heatmap", lambda *args: True)
    real_record = services.record_predictions
    monkeypatch.setattr(services, "record_predictions", lambda *a, **k: (_ for _ in ()).throw(DEADLOCK))
    assert classify_smear(smear.pk) == "failed"
    smear.refresh_from_db()
    assert smear.status == "failed" and smear.transient_failure
    assert "Temporary database error" in smear.error

    monkeypatch.setattr(services, "record_predictions", real_record)
    with django_capture_on_commit_callbacks(execute=True):
        counts = services.sweep_stale_smears()
    assert counts["requeued"] == 1 and sent_messages == [smear.pk]
    smear.refresh_from_db()
    assert smear.status == "queued" and not smear.transient_failure
    assert classify_smear(smear.pk) == "done"


def test_sweep_leaves_ordinary_failures_to_a_person(smear_factory, sent_messages):
    smear = smear_factory(status="failed", error="The image could not be read by the model.")
    assert services.sweep_stale_smears()["requeued"] == 0
    smear.refresh_from_db()
    assert smear.status == "failed"


def test_sweep_stops_retrying_transient_failures_after_the_attempt_limit(smear_factory, settings, sent_messages):
    smear = smear_factory(status="failed", transient_failure=True, attempts=settings.SMEAR_MAX_ATTEMPTS)
    assert services.sweep_stale_smears()["requeued"] == 0
    assert Smear.objects.get(pk=smear.pk).status == "failed"


# --- Issue 13, item 12: a heat map lost with its worker is computed again ---------
@pytest.fixture
def sent_heatmaps(monkeypatch):
    sent = []
    monkeypatch.setattr(services.recovery, "enqueue_heatmap", lambda prediction: sent.append(prediction.pk) or True)
    return sent


@pytest.fixture
def lost_heatmap(smear_factory, settings):
    """A prediction made long ago whose worker died during Grad-CAM."""
    from datetime import timedelta

    from django.utils import timezone

    from diagnosis.models import Prediction

    smear = smear_factory(status="processing")
    prediction = services.record_prediction(smear.pk, result("Pre"), 5)
    long_ago = timezone.now() - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 60)
    Prediction.objects.filter(pk=prediction.pk).update(created_at=long_ago)
    return prediction


def test_sweep_requests_a_lost_heat_map_again_and_the_task_stores_it(lost_heatmap, sent_heatmaps, monkeypatch):
    from diagnosis import tasks
    from tests.portal_testutils import image_bytes

    from diagnosis.tasks import sweep_stale_smears

    sweep_stale_smears()  # the periodic task
    assert sent_heatmaps == [lost_heatmap.pk]
    assert services.resend_lost_heatmaps() == 0  # not again until it is stale once more
    monkeypatch.setattr(tasks, "load_predictor_for", lambda kind: object())
    monkeypatch.setattr(tasks, "make_heatmap",
                        lambda prediction, predictor, smear: services.store_heatmap(prediction.pk, image_bytes("JPEG")))
    assert tasks.retry_heatmap(lost_heatmap.pk) == "done"
    lost_heatmap.refresh_from_db()
    assert lost_heatmap.heatmap and lost_heatmap.label == "Pre"
    assert tasks.retry_heatmap(lost_heatmap.pk) == "skipped"  # a duplicate message does nothing


def test_heat_map_that_keeps_killing_its_worker_is_marked_unavailable(lost_heatmap, sent_heatmaps, settings):
    from diagnosis.models import Prediction

    Prediction.objects.filter(pk=lost_heatmap.pk).update(heatmap_attempts=settings.SMEAR_MAX_ATTEMPTS)
    assert services.resend_lost_heatmaps() == 0 and sent_heatmaps == []
    lost_heatmap.refresh_from_db()
    assert "worker stopped while computing it" in lost_heatmap.heatmap_error


def test_recent_prediction_without_heat_map_is_left_to_its_worker(smear_factory, sent_heatmaps):
    smear = smear_factory(status="processing")
    services.record_prediction(smear.pk, result("Pre"), 5)
    assert services.resend_lost_heatmaps() == 0 and sent_heatmaps == []


def test_workers_accept_json_messages_only_so_a_pickled_message_is_never_run():
    from leukportal.celery import app

    assert app.conf.accept_content == ["json"]
    assert (app.conf.task_serializer, app.conf.result_serializer) == ("json", "json")
