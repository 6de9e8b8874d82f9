"""The worker side: claiming, classifying, failing, retrying, sweeping.

The predictor is replaced by a fake `ml` module here; the end-to-end test
(test_diagnosis_e2e.py) runs the real one in a real worker."""
import sys
import types
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnosis import services
from diagnosis.models import Case, Prediction, Smear
from diagnosis.tasks import classify_smear, sweep_stale_smears

pytestmark = pytest.mark.django_db

CLASSES = ("Benign", "Early", "Pre", "Pro")


class FakeImageError(ValueError):
    pass


class FakePredictor:
    name = "fake_model"
    version = "0.0-test"
    classes = CLASSES

    def __init__(self, probabilities=None, error=None):
        self.calls = []
        self.probabilities = probabilities or {"Benign": 0.05, "Early": 0.1, "Pre": 0.8, "Pro": 0.05}
        self.error = error

    def predict(self, images):
        self.calls.append(images)
        if self.error:
            raise self.error
        stage = max(self.probabilities, key=self.probabilities.get)
        return [
            {"stage": stage, "probabilities": dict(self.probabilities), "model": self.name, "model_version": self.version,
             "in_domain": True, "domain_score": 0.5}
            for _ in images
        ]


@pytest.fixture
def fake_ml(monkeypatch):
    module = types.ModuleType("ml")
    module.ImageError = FakeImageError
    module.predictor = FakePredictor()
    module.load_predictor = lambda: module.predictor
    monkeypatch.setitem(sys.modules, "ml", module)
    return module


def test_classify_stores_prediction_and_updates_case(fake_ml, smear_factory, case):
    smear = smear_factory()
    assert classify_smear(smear.pk) == "done"
    smear.refresh_from_db()
    assert smear.status == Smear.Status.DONE and smear.attempts == 1 and smear.claimed_at
    assert fake_ml.predictor.calls == [[smear.image.path]]
    p = smear.prediction
    assert (p.label, p.model_name, p.model_version) == ("Pre", "fake_model", "0.0-test")
    assert p.probabilities == {"Benign": 0.05, "Early": 0.1, "Pre": 0.8, "Pro": 0.05}
    case.refresh_from_db()
    assert case.status == Case.Status.DONE
    assert case.suggested_stage == "Pre" and case.suggested_confidence == pytest.approx(0.8)


def test_second_delivery_does_not_classify_twice(fake_ml, smear_factory):
    smear = smear_factory()
    assert classify_smear(smear.pk) == "done"
    assert classify_smear(smear.pk) == "skipped"  # the broker re-delivered the message
    assert len(fake_ml.predictor.calls) == 1
    assert Prediction.objects.filter(smear=smear).count() == 1


def test_claim_is_atomic_and_exclusive(smear_factory):
    smear = smear_factory()
    first = services.claim_smear(smear.pk)
    assert first is not None and first.status == Smear.Status.PROCESSING
    assert services.claim_smear(smear.pk) is None  # a concurrent delivery loses
    assert services.claim_smear(999999) is None  # deleted / unknown smear


def test_message_for_smear_being_processed_is_skipped(fake_ml, smear_factory):
    smear = smear_factory(status="processing", claimed_at=timezone.now(), attempts=1)
    assert classify_smear(smear.pk) == "skipped"
    assert fake_ml.predictor.calls == []


def test_predictor_failure_marks_smear_failed_and_keeps_everything(fake_ml, smear_factory, case):
    good = smear_factory()
    classify_smear(good.pk)
    bad = smear_factory()
    fake_ml.predictor.error = FakeImageError("cannot identify image file")
    assert classify_smear(bad.pk) == "failed"
    bad.refresh_from_db()
    assert bad.status == Smear.Status.FAILED
    assert bad.error == "The image could not be read by the model: cannot identify image file"
    assert bad.image.open("rb").read()  # file kept
    case.refresh_from_db()
    assert case.status == Case.Status.ATTENTION
    # the good smear's prediction still drives the suggestion
    assert case.suggested_stage == "Pre"
    assert Prediction.objects.count() == 1


def test_an_unexpected_error_is_named_by_its_kind_and_its_text_goes_to_the_log(fake_ml, smear_factory, caplog):
    smear = smear_factory()
    fake_ml.predictor.error = RuntimeError("connection to s3://lab-bucket?token=secret refused")
    classify_smear(smear.pk)
    smear.refresh_from_db()
    assert smear.error == ("Classification failed: unexpected error (RuntimeError). "
                           "The details are in the worker's log.")
    assert "token=secret" in caplog.text  # the technician reads the kind; the administrator the whole error


def test_a_missing_image_file_is_reported_without_the_servers_path(fake_ml, smear_factory):
    smear = smear_factory()
    path = smear.image.path
    fake_ml.predictor.error = FakeImageError(f"file not found: {path}")  # ml's sentence names the path it was given
    classify_smear(smear.pk)
    smear.refresh_from_db()
    assert smear.error == "The image could not be read by the model: file not found: the stored image"
    assert str(smear.image.storage.location) not in smear.error


def test_a_file_error_says_the_systems_name_for_it_without_the_path(fake_ml, smear_factory):
    import errno

    smear = smear_factory()
    fake_ml.predictor.error = OSError(errno.EACCES, "Permission denied", smear.image.path)
    classify_smear(smear.pk)
    smear.refresh_from_db()
    assert smear.error == ("Classification failed: a file could not be read or written (Permission denied). "
                           "The details are in the worker's log.")


def test_invalid_model_output_is_refused(fake_ml, smear_factory):
    smear = smear_factory()
    fake_ml.predictor.probabilities = {"Benign": 0.9, "Early": 0.9, "Pre": 0.1, "Pro": 0.1}
    classify_smear(smear.pk)
    smear.refresh_from_db()
    assert smear.status == Smear.Status.FAILED and "sum to" in smear.error
    assert not Prediction.objects.exists()


def test_soft_time_limit_marks_failed(fake_ml, smear_factory, settings):
    from celery.exceptions import SoftTimeLimitExceeded

    smear = smear_factory()
    fake_ml.predictor.error = SoftTimeLimitExceeded()
    assert classify_smear(smear.pk) == "failed"
    smear.refresh_from_db()
    assert f"longer than the {settings.CELERY_TASK_SOFT_TIME_LIMIT} s time limit" in smear.error


def test_retry_from_case_page_requeues_and_then_classifies(
    fake_ml, smear_factory, client, technician, sent_messages, django_capture_on_commit_callbacks
):
    smear = smear_factory()
    fake_ml.predictor.error = RuntimeError("worker lost its GPU")
    classify_smear(smear.pk)
    client.force_login(technician)
    page = client.get(smear.case.get_absolute_url()).content.decode()
    assert "unexpected error (RuntimeError)" in page and "Retry classification" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("diagnosis:smear_retry", args=[smear.pk]))
    assert response.status_code == 302
    smear.refresh_from_db()
    assert smear.status == Smear.Status.QUEUED and sent_messages == [smear.pk]
    fake_ml.predictor.error = None
    assert classify_smear(smear.pk) == "done"
    smear.refresh_from_db()
    assert smear.status == Smear.Status.DONE and smear.attempts == 2 and smear.error == ""


def test_retry_of_a_smear_that_is_not_failed_changes_nothing(smear_factory, client, technician, sent_messages):
    smear = smear_factory(status="done")
    client.force_login(technician)
    response = client.post(reverse("diagnosis:smear_retry", args=[smear.pk]), follow=True)
    assert "nothing to retry" in response.content.decode()
    smear.refresh_from_db()
    assert smear.status == Smear.Status.DONE and sent_messages == []


def signed_out(smear):
    """Its case signed out as it stands (a failed smear marked not assessable is allowed at sign-out)."""
    Case.objects.filter(pk=smear.case_id).update(signed_out_at=timezone.now())
    smear.case.refresh_from_db()
    return smear


def test_a_failed_smear_of_a_signed_out_case_cannot_be_retried(smear_factory, client, technician, sent_messages):
    from diagnosis.models import AuditEvent

    smear = signed_out(smear_factory(status="failed", error="The image could not be read by the model."))
    client.force_login(technician)
    page = client.get(smear.case.get_absolute_url()).content.decode()
    assert 'data-field="retry" hidden' in page  # no retry button on a signed-out case
    response = client.post(reverse("diagnosis:smear_retry", args=[smear.pk]), follow=True)
    assert response.status_code == 200 and "was signed out" in response.content.decode()
    smear.refresh_from_db()
    assert smear.status == Smear.Status.FAILED and sent_messages == []
    assert not AuditEvent.objects.filter(action=AuditEvent.Action.RETRY).exists()
    with pytest.raises(services.CaseLocked):
        services.retry_smear(smear)
    status = client.get(reverse("diagnosis:case_status", args=[smear.case_id])).json()
    assert [item["can_retry"] for item in status["smears"]] == [False]


def test_the_sweep_leaves_a_transient_failure_of_a_signed_out_case_as_signed(smear_factory, sent_messages):
    smear = signed_out(smear_factory(status="failed", transient_failure=True, attempts=1))
    assert services.sweep_stale_smears()["requeued"] == 0
    assert Smear.objects.get(pk=smear.pk).status == Smear.Status.FAILED and sent_messages == []


def test_the_admin_retry_action_skips_smears_of_signed_out_cases(smear_factory, case, admin_client, sent_messages):
    open_smear = smear_factory(status="failed")
    other_case = Case.objects.create(patient=case.patient, accession_number="ACC-0002", created_by=case.created_by)
    locked = signed_out(smear_factory(status="failed", case_=other_case))
    response = admin_client.post(reverse("admin:diagnosis_smear_changelist"),
                                 {"action": "retry_failed", "_selected_action": [open_smear.pk, locked.pk]}, follow=True)
    page = response.content.decode()
    assert "1 smear(s) queued again" in page and "1 smear(s) left as they are: their case is signed out" in page
    assert Smear.objects.get(pk=locked.pk).status == Smear.Status.FAILED
    assert Smear.objects.get(pk=open_smear.pk).status == Smear.Status.QUEUED


def test_sweep_requeues_smears_of_dead_workers(smear_factory, settings, sent_messages, django_capture_on_commit_callbacks):
    now = timezone.now()
    long_ago = now - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 5)
    stale = smear_factory(status="processing", claimed_at=long_ago, attempts=1)
    running = smear_factory(status="processing", claimed_at=now - timedelta(seconds=10), attempts=1)
    exhausted = smear_factory(status="processing", claimed_at=long_ago, attempts=settings.SMEAR_MAX_ATTEMPTS)
    done = smear_factory(status="done", claimed_at=long_ago, attempts=1)
    with django_capture_on_commit_callbacks(execute=True):
        counts = sweep_stale_smears()
    assert counts == {"requeued": 1, "failed": 1, "resent": 0}
    for s in (stale, running, exhausted, done):
        s.refresh_from_db()
    assert stale.status == Smear.Status.QUEUED and stale.claimed_at is None
    assert running.status == Smear.Status.PROCESSING
    assert exhausted.status == Smear.Status.FAILED and "did not finish after 3 attempts" in exhausted.error
    assert done.status == Smear.Status.DONE
    assert sent_messages == [stale.pk]


def test_sweep_resends_long_queued_smears_once(smear_factory, settings, sent_messages):
    old = smear_factory()
    fresh = smear_factory()
    Smear.objects.filter(pk=old.pk).update(
        updated_at=timezone.now() - timedelta(seconds=settings.SMEAR_RESEND_QUEUED_AFTER_SECONDS + 5)
    )
    assert services.sweep_stale_smears()["resent"] == 1
    assert sent_messages == [old.pk]
    assert services.sweep_stale_smears()["resent"] == 0  # not re-sent on every sweep
    assert fresh.pk not in sent_messages


def test_requeued_smear_is_classified_once_even_with_old_message(fake_ml, smear_factory, settings, django_capture_on_commit_callbacks):
    smear = smear_factory(status="processing", attempts=1,
                          claimed_at=timezone.now() - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 1))
    with django_capture_on_commit_callbacks(execute=True):
        services.sweep_stale_smears()
    assert classify_smear(smear.pk) == "done"  # the re-sent message
    assert classify_smear(smear.pk) == "skipped"  # the original message, re-delivered by the broker
    assert len(fake_ml.predictor.calls) == 1


def test_broker_down_at_upload_keeps_smear_queued(smear_factory, monkeypatch):
    smear = smear_factory()

    def broken(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(classify_smear, "apply_async", broken)
    assert services.enqueue_classification(smear.pk) is False
    smear.refresh_from_db()
    assert smear.status == Smear.Status.QUEUED


def test_case_suggestion_is_mean_of_probability_vectors(smear_factory, case):
    # Argmax of individual smears would be Pre, Pre, Pro; the mean says Pro.
    vectors = [(0.0, 0.0, 0.5, 0.5 - 1e-9), (0.0, 0.0, 0.5, 0.5 - 1e-9), (0.0, 0.0, 0.1, 0.9)]
    for vector in vectors:
        smear = smear_factory(status="processing")
        probabilities = dict(zip(CLASSES, vector))
        result = {"stage": max(probabilities, key=probabilities.get), "probabilities": probabilities,
                  "model": "m", "model_version": "1", "in_domain": True, "domain_score": 0.5}
        services.record_prediction(smear.pk, result, 12.5)
    smear_factory(status="failed")  # ignored by the suggestion
    services.refresh_case(case)
    stage, confidence, n = case.compute_suggestion()
    assert (stage, n) == ("Pro", 3)
    assert confidence == pytest.approx((0.5 + 0.5 + 0.9) / 3, abs=1e-6)
    case.refresh_from_db()
    assert case.suggested_stage == "Pro" and case.status == Case.Status.ATTENTION


def test_case_without_classified_smears_has_no_suggestion(case, smear_factory):
    smear_factory()
    assert case.compute_suggestion() == (None, None, 0)


def test_status_json(fake_ml, smear_factory, case, client, pathologist, technician, settings):
    settings.SMEAR_BATCH_SIZE = 1  # one smear per message, so the three smears end in three states
    done, failed, queued = smear_factory(), smear_factory(), smear_factory()
    classify_smear(done.pk)
    fake_ml.predictor.error = RuntimeError("boom")
    classify_smear(failed.pk)
    client.force_login(pathologist)
    data = client.get(reverse("diagnosis:case_status", args=[case.pk])).json()
    assert data["pending"] is True and data["status"] == "processing"
    by_id = {s["id"]: s for s in data["smears"]}
    assert by_id[done.pk]["stage"] == "Pre" and by_id[done.pk]["probabilities"]["Pre"] == 0.8
    assert by_id[failed.pk]["status"] == "failed"
    assert by_id[failed.pk]["error"].startswith("Classification failed: unexpected error (RuntimeError)")
    assert by_id[failed.pk]["can_retry"] is False  # pathologists cannot retry
    assert by_id[queued.pk]["stage"] is None
    client.force_login(technician)
    data = client.get(reverse("diagnosis:case_status", args=[case.pk])).json()
    assert {s["id"]: s["can_retry"] for s in data["smears"]}[failed.pk] is True


def test_case_list_filters(client, pathologist, patient, technician, smear_factory, fake_ml):
    other = Case.objects.create(patient=patient, accession_number="ACC-0002", created_by=technician)
    s = smear_factory(case_=other)
    classify_smear(s.pk)
    client.force_login(pathologist)
    url = reverse("diagnosis:case_list")

    def listed(**params):
        return [c.accession_number for c in client.get(url, params).context["object_list"]]

    assert listed() == ["ACC-0002", "ACC-0001"]
    assert listed(status="done") == ["ACC-0002"]
    assert listed(status="empty") == ["ACC-0001"]
    assert listed(stage="Pre") == ["ACC-0002"]
    assert listed(stage="Pro") == []
    assert listed(q="P-0001") == ["ACC-0002", "ACC-0001"]
    assert listed(q="0002") == ["ACC-0002"]
    assert listed(patient=patient.pk) == ["ACC-0002", "ACC-0001"]


def test_case_list_paginates(client, pathologist, patient, technician):
    Case.objects.bulk_create(
        [Case(patient=patient, accession_number=f"B-{i:03}", created_by=technician) for i in range(30)]
    )
    client.force_login(pathologist)
    first = client.get(reverse("diagnosis:case_list"), {"status": "empty"})
    assert len(first.context["object_list"]) == 25 and "status=empty&amp;page=2" in first.content.decode()
    second = client.get(reverse("diagnosis:case_list"), {"status": "empty", "page": 2})
    assert len(second.context["object_list"]) == 5


def test_patient_history_lists_all_cases_in_time_order(client, pathologist, patient, technician, case):
    Case.objects.create(patient=patient, accession_number="ACC-LATER", created_by=technician)
    client.force_login(pathologist)
    response = client.get(patient.get_absolute_url())
    assert [c.accession_number for c in response.context["cases"]] == ["ACC-0001", "ACC-LATER"]
