"""Issue 14, item 4: the batched worker. A message claims its smear and up to
SMEAR_BATCH_SIZE - 1 other queued smears of its kind in the database, predicts
them in one call, and keeps every guarantee of the one-smear worker: never
classified twice, a duplicate message is a no-op, a failing image fails only
its smear, results land on their own smears, a dead worker's batch is
re-queued by the sweep, and heat maps are queued only after the batch's
results are all recorded."""
import sys
import threading
import types
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from PIL import Image

from diagnosis import services, tasks
from diagnosis.models import AuditEvent, Case, Prediction, Smear
from tests.review.conftest import result

pytestmark = pytest.mark.django_db


class FakeImageError(ValueError):
    pass


class ContractPredictor:
    """A fake with ml.Predictor's contract: one result per image, in order; the
    first unreadable image raises ImageError naming it. The stage of each
    image is looked up by its path, so a result on the wrong smear shows."""

    def __init__(self):
        self.calls = []
        self.stage_of = {}
        self.result_of = {}  # path -> a whole (e.g. malformed) result

    def predict(self, images):
        images = list(images)
        self.calls.append(images)
        for image in images:
            try:
                with Image.open(image) as img:
                    img.load()
            except Exception as exc:
                raise FakeImageError(f"{image}: not a recognised image format") from exc
        return [self.result_of.get(image) or result(self.stage_of.get(image, "Pre")) for image in images]


@pytest.fixture
def predictor(monkeypatch):
    module = types.ModuleType("ml")
    module.ImageError = FakeImageError
    module.predictor = ContractPredictor()
    module.load_predictor = lambda name=None: module.predictor
    monkeypatch.setitem(sys.modules, "ml", module)
    return module.predictor


def corrupt(smear):
    with open(smear.image.path, "wb") as fh:
        fh.write(b"this is not an image any more")
    return smear


def statuses(*smears):
    return [Smear.objects.get(pk=s.pk).status for s in smears]


# --- The claim ---------------------------------------------------------------------
def test_a_claim_takes_the_messages_smear_first_then_the_oldest_queued_of_its_kind(smear_factory):
    first, second, third, fourth = (smear_factory() for _ in range(4))
    cell = smear_factory(kind="cell")
    claimed = services.claim_batch(third.pk, limit=3)
    assert [s.pk for s in claimed] == [third.pk, first.pk, second.pk]
    assert statuses(first, second, third, fourth, cell) == ["processing"] * 3 + ["queued", "queued"]
    for smear in claimed:
        smear.refresh_from_db()
        assert smear.attempts == 1 and smear.claimed_at is not None and smear.error == ""
    assert len({s.claimed_at for s in claimed}) == 1  # one claim: the sweep treats the batch alike


def test_a_claim_skips_smears_being_processed_and_never_claims_twice(smear_factory):
    busy = smear_factory(status="processing", claimed_at=timezone.now(), attempts=1)
    done = smear_factory(status="done")
    queued = [smear_factory() for _ in range(3)]
    claimed = services.claim_batch(queued[0].pk, limit=32)
    assert {s.pk for s in claimed} == {s.pk for s in queued}
    assert statuses(busy, done) == ["processing", "done"]
    for smear in queued:
        assert services.claim_batch(smear.pk, limit=32) == []  # taken: a later message claims nothing
    assert Smear.objects.get(pk=busy.pk).attempts == 1


def test_a_message_whose_smear_is_taken_claims_nothing_else(smear_factory):
    taken = smear_factory(status="processing", claimed_at=timezone.now(), attempts=1)
    waiting = smear_factory()
    assert services.claim_batch(taken.pk, limit=32) == []
    assert services.claim_batch(123456, limit=32) == []  # deleted or unknown smear
    assert statuses(waiting) == ["queued"]  # left to its own message


# --- The task ---------------------------------------------------------------------
def test_one_message_classifies_the_waiting_smears_of_its_kind_in_one_call(predictor, smear_factory, settings):
    settings.SMEAR_BATCH_SIZE = 3
    smears = [smear_factory() for _ in range(5)]
    cell = smear_factory(kind="cell")
    assert tasks.classify_smear(smears[0].pk) == "done"
    assert predictor.calls == [[s.image.path for s in smears[:3]]]
    assert statuses(*smears, cell) == ["done"] * 3 + ["queued"] * 2 + ["queued"]
    assert [tasks.classify_smear(s.pk) for s in smears[1:]] == ["skipped", "skipped", "done", "skipped"]
    assert len(predictor.calls) == 2 and Prediction.objects.count() == 5


def test_a_duplicate_message_is_a_no_op(predictor, smear_factory, queued_heatmaps):
    smears = [smear_factory() for _ in range(2)]
    assert tasks.classify_smear(smears[0].pk) == "done"
    for smear in smears * 2:  # the other smear's own message, and re-deliveries of both
        assert tasks.classify_smear(smear.pk) == "skipped"
    assert len(predictor.calls) == 1
    assert Prediction.objects.count() == 2 and len(queued_heatmaps) == 2
    assert AuditEvent.objects.filter(action="prediction").count() == 2


@pytest.mark.parametrize("with_corrupt_image", [False, True], ids=["one call", "one image failing"])
def test_results_land_on_their_own_smears(predictor, smear_factory, with_corrupt_image):
    smears = [smear_factory() for _ in range(6)]
    expected = dict(zip((s.pk for s in smears), ["Benign", "Pro", "Early", "Pre", "Pro", "Benign"]))
    for smear in smears:
        predictor.stage_of[smear.image.path] = expected[smear.pk]
    broken = corrupt(smears[2]) if with_corrupt_image else None  # must not shift the results after it
    assert tasks.classify_smear(smears[4].pk) == "done"  # the batch starts with the 5th smear, then the oldest
    assert predictor.calls[0] == [smears[i].image.path for i in (4, 0, 1, 2, 3, 5)]
    for smear in smears:
        smear.refresh_from_db()
        if broken and smear.pk == broken.pk:
            assert smear.status == "failed" and not Prediction.objects.filter(smear=smear).exists()
        else:
            assert smear.prediction.label == expected[smear.pk], smear.original_filename


def test_one_corrupt_image_fails_only_its_smear_with_the_reason(predictor, smear_factory, case):
    good = [smear_factory() for _ in range(3)]
    bad = corrupt(smear_factory())
    assert tasks.classify_smear(good[0].pk) == "done"
    bad.refresh_from_db()
    assert bad.status == "failed"
    assert bad.error.startswith("The image could not be read by the model:") and "not a recognised image" in bad.error
    assert statuses(*good) == ["done"] * 3
    # One call for the batch, then each image alone to find the one that fails.
    assert len(predictor.calls) == 1 + 4 and predictor.calls[0] == [s.image.path for s in [*good, bad]]
    case.refresh_from_db()
    assert case.status == Case.Status.ATTENTION and case.suggested_stage == "Pre"
    assert tasks.classify_smear(bad.pk) == "skipped"  # failed is final until a person retries it


def test_the_messages_own_smear_reports_its_failure(predictor, smear_factory):
    bad = corrupt(smear_factory())
    other = smear_factory()
    assert tasks.classify_smear(bad.pk) == "failed"
    assert statuses(bad, other) == ["failed", "done"]


def test_an_invalid_result_fails_only_its_smear(predictor, smear_factory):
    smears = [smear_factory() for _ in range(3)]
    predictor.result_of[smears[1].image.path] = {"stage": "Pre", "probabilities": {"Pre": 2.0}}
    tasks.classify_smear(smears[0].pk)
    assert statuses(*smears) == ["done", "failed", "done"]
    assert "Classification failed: the model returned" in Smear.objects.get(pk=smears[1].pk).error
    assert AuditEvent.objects.filter(action="classification_failed", smear=smears[1]).count() == 1


def test_a_batch_spanning_cases_recomputes_each_case_once(predictor, smear_factory, patient, technician, monkeypatch):
    other = Case.objects.create(patient=patient, accession_number="ACC-0002", created_by=technician)
    smears = [smear_factory(), smear_factory(case_=other), smear_factory(), smear_factory(case_=other)]
    refreshed = []
    real = services.classification._refresh_case_by_id
    monkeypatch.setattr(services.classification, "_refresh_case_by_id", lambda pk: refreshed.append(pk) or real(pk))
    tasks.classify_smear(smears[0].pk)
    assert sorted(refreshed) == sorted({smears[0].case_id, other.pk})  # each case once, in id order
    assert refreshed == sorted(refreshed)
    for case in Case.objects.all():
        assert case.status == Case.Status.DONE and case.suggested_stage == "Pre"


def test_the_soft_time_limit_fails_the_unfinished_smears_of_the_batch(predictor, smear_factory, monkeypatch, settings):
    from celery.exceptions import SoftTimeLimitExceeded

    smears = [smear_factory() for _ in range(3)]
    monkeypatch.setattr(predictor, "predict", lambda images: (_ for _ in ()).throw(SoftTimeLimitExceeded()))
    assert tasks.classify_smear(smears[0].pk) == "failed"
    for smear in smears:
        smear.refresh_from_db()
        assert smear.status == "failed" and f"{settings.CELERY_TASK_SOFT_TIME_LIMIT} s time limit" in smear.error


# --- Heat maps ---------------------------------------------------------------------
def test_heat_maps_are_queued_only_after_every_result_of_the_batch_is_recorded(predictor, smear_factory, monkeypatch):
    smears = [smear_factory() for _ in range(3)]
    outside = smear_factory()
    predictor.result_of[outside.image.path] = {**result("Pre"), "in_domain": False, "reason": "blank image"}
    seen = []

    def enqueue(prediction):
        seen.append((prediction.pk, statuses(*smears, outside)))
        return True

    monkeypatch.setattr(services, "enqueue_heatmap", enqueue)
    tasks.classify_smear(smears[0].pk)
    assert [pk for pk, _ in seen] == [Prediction.objects.get(smear=s).pk for s in smears]  # none for the outside one
    assert all(states == ["done"] * 4 for _, states in seen)


def later(settings, minutes):
    return timezone.now() + timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS) + timedelta(minutes=minutes)


def test_a_heat_map_waiting_long_on_its_queue_is_sent_again_but_never_given_up(smear_factory, settings, monkeypatch):
    """Behind a long heat-map queue the sweep re-sends the message now and then;
    only a worker starting it counts an attempt, so waiting never ends in
    "unavailable"; the first start computes it and the duplicates do nothing."""
    sent = []
    monkeypatch.setattr(services.recovery, "enqueue_heatmap", lambda prediction: sent.append(prediction.pk) or True)
    smear = smear_factory(status="processing")
    prediction = services.record_prediction(smear.pk, result("Pre"), 5)
    for minutes in range(0, 10 * settings.SMEAR_MAX_ATTEMPTS, 10):  # many sweeps, each after it went stale again
        services.resend_lost_heatmaps(now=later(settings, minutes))
    assert len(sent) == settings.SMEAR_MAX_ATTEMPTS
    prediction.refresh_from_db()
    assert prediction.heatmap_error == "" and prediction.heatmap_attempts == 0
    stored = []
    monkeypatch.setattr(tasks, "load_predictor_for", lambda kind: object())
    monkeypatch.setattr(tasks, "make_heatmap", lambda p, predictor, s: stored.append(p.pk) or True)
    assert tasks.compute_heatmap(prediction.pk) == "done"
    assert Prediction.objects.get(pk=prediction.pk).heatmap_attempts == 1
    services.store_heatmap(prediction.pk, b"jpeg bytes")
    assert [tasks.compute_heatmap(prediction.pk) for _ in sent] == ["skipped"] * len(sent)
    assert stored == [prediction.pk]


def test_a_heat_map_whose_workers_keep_dying_is_marked_unavailable_when_started_again(smear_factory, settings,
                                                                                     monkeypatch):
    smear = smear_factory(status="processing")
    prediction = services.record_prediction(smear.pk, result("Pre"), 5)
    for _ in range(settings.SMEAR_MAX_ATTEMPTS):
        assert services.claim_heatmap(prediction.pk) is not None  # ... and the worker dies each time
    monkeypatch.setattr(tasks, "make_heatmap", lambda *a: pytest.fail("not computed again"))
    assert tasks.compute_heatmap(prediction.pk) == "skipped"
    prediction.refresh_from_db()
    assert "worker stopped while computing it (3 attempts)" in prediction.heatmap_error
    assert Smear.objects.get(pk=smear.pk).status == "done"  # the prediction stays


# --- A worker that dies mid-batch ---------------------------------------------------
def test_the_sweep_requeues_the_whole_batch_of_a_dead_worker(predictor, smear_factory, settings, sent_messages,
                                                             django_capture_on_commit_callbacks):
    smears = [smear_factory() for _ in range(4)]
    claimed = services.claim_batch(smears[0].pk, limit=3)  # ... and the worker is killed here
    assert tasks.classify_smear(smears[0].pk) == "skipped"  # the re-delivered message (late acknowledgement)
    later = timezone.now() + timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 1)
    with django_capture_on_commit_callbacks(execute=True):
        counts = services.sweep_stale_smears(now=later)
    assert counts["requeued"] == 3 and sorted(sent_messages) == sorted(s.pk for s in claimed)
    assert statuses(*smears) == ["queued"] * 4
    assert [tasks.classify_smear(pk) for pk in sent_messages][0] == "done"
    assert statuses(*smears) == ["done"] * 4
    assert Prediction.objects.count() == 4 and len(predictor.calls) == 1
    assert sorted(Smear.objects.values_list("attempts", flat=True)) == [1, 2, 2, 2]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_claims_never_share_a_smear(smear_factory):
    """Two workers claiming at once on MariaDB/MySQL (SKIP LOCKED); SQLite runs
    one writer at a time, so there is nothing concurrent to test there."""
    if connection.vendor != "mysql":
        pytest.skip("row locks with SKIP LOCKED need MariaDB/MySQL (DATABASE_URL=mysql://...)")
    smears = [smear_factory() for _ in range(40)]
    claims, barrier = {}, threading.Barrier(2)

    def worker(name, trigger):
        from django.db import connections

        try:
            barrier.wait()
            claims[name] = [s.pk for s in services.claim_batch(trigger, limit=25)]
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(n, smears[i].pk)) for n, i in (("a", 0), ("b", 39))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    a, b = set(claims["a"]), set(claims["b"])
    assert not a & b  # never a smear in two batches
    # Each message's smear is taken, by its own message or by the other's batch (then its message claims nothing).
    assert {smears[0].pk, smears[39].pk} <= a | b
    assert len(a) <= 25 and len(b) <= 25 and Smear.objects.filter(status="processing").count() == len(a) + len(b)
    assert all(Smear.objects.get(pk=pk).attempts == 1 for pk in a | b)
