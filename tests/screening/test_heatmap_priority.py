"""Heat maps of what a pathologist opens come first: a field's map and a flagged cell's map are sent at a higher
priority than the map of a cell the screen let through, by the worker that made the prediction and by the sweep
that re-sends a lost one; on Redis the heat-map worker then takes them first."""
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from diagnosis import services, tasks
from diagnosis.models import Prediction

from .conftest import THRESHOLD

pytestmark = pytest.mark.django_db


@pytest.fixture
def heatmap_priorities(monkeypatch):
    """The heat-map messages sent, as (prediction id, priority) in order."""
    sent = []
    monkeypatch.setattr(tasks.compute_heatmap, "apply_async",
                        lambda args=None, kwargs=None, **options: sent.append((args[0], options.get("priority"))))
    return sent


def test_a_field_and_a_flagged_cell_come_first_and_a_cell_the_screen_let_through_later(field, cell):
    assert services.heatmap_priority(field("Pre").prediction) == services.HEATMAP_PRIORITY_FIRST
    assert services.heatmap_priority(field("Benign").prediction) == services.HEATMAP_PRIORITY_FIRST
    assert services.heatmap_priority(cell(0.9).prediction) == services.HEATMAP_PRIORITY_FIRST
    assert services.heatmap_priority(cell(THRESHOLD).prediction) == services.HEATMAP_PRIORITY_FIRST  # at the cut
    assert services.heatmap_priority(cell(0.05).prediction) == services.HEATMAP_PRIORITY_LATER
    # Redis serves the lower number first.
    assert services.HEATMAP_PRIORITY_FIRST < services.HEATMAP_PRIORITY_LATER


def test_the_worker_sends_each_cells_heat_map_at_its_priority(fake_ml, smear_factory, heatmap_priorities):
    fake_ml.screening.p_blast = 0.9
    flagged = smear_factory(kind="cell")
    tasks.classify_smear(flagged.pk)
    fake_ml.screening.p_blast = 0.02
    passed = smear_factory(kind="cell")  # made now, or the first message would classify it in its batch
    tasks.classify_smear(passed.pk)
    assert heatmap_priorities == [(Prediction.objects.get(smear=flagged).pk, services.HEATMAP_PRIORITY_FIRST),
                                  (Prediction.objects.get(smear=passed).pk, services.HEATMAP_PRIORITY_LATER)]


def test_the_sweep_resends_a_lost_heat_map_at_its_priority(field, cell, heatmap_priorities, settings):
    made = [field("Pre").prediction, cell(0.9).prediction, cell(0.02).prediction]
    later = timezone.now() + timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS + 60)
    assert services.resend_lost_heatmaps(now=later) == 3
    assert sorted(heatmap_priorities) == sorted([
        (made[0].pk, services.HEATMAP_PRIORITY_FIRST),
        (made[1].pk, services.HEATMAP_PRIORITY_FIRST),
        (made[2].pk, services.HEATMAP_PRIORITY_LATER),
    ])


def redis_broker_or_skip():
    url = django_settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://")):
        pytest.skip(f"message priorities need the Redis broker; CELERY_BROKER_URL is {url.split(':')[0]}://")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        pytest.skip(f"Redis broker is not reachable: {exc}")
    return url


@pytest.mark.real_broker
def test_on_redis_the_heat_map_worker_takes_flagged_cells_before_cells_sent_earlier_at_a_lower_priority(
        cell, settings):
    url = redis_broker_or_skip()
    from kombu import Connection

    settings.CELERY_HEATMAP_QUEUE = queue = f"leukportal-test-priority-{uuid.uuid4().hex[:8]}"
    passed = [cell(0.02).prediction for _ in range(3)]
    flagged = [cell(0.9).prediction for _ in range(2)]
    for prediction in passed + flagged:  # the let-through cells' messages are sent first
        assert services.enqueue_heatmap(prediction)
    taken = []
    with Connection(url, transport_options=django_settings.CELERY_BROKER_TRANSPORT_OPTIONS) as connection:
        waiting = connection.SimpleQueue(queue)
        try:
            for _ in passed + flagged:
                message = waiting.get(timeout=5)
                taken.append(message.headers["argsrepr"])
                message.ack()
        finally:
            waiting.queue.delete()
            waiting.close()
    assert taken == [f"({p.pk},)" for p in flagged + passed]
