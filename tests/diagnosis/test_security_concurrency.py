"""Issue 13, item 5 on a real server: several workers recording predictions
for smears of one case at the same time. On MariaDB/MySQL, taking the case
row lock after InnoDB's shared locks (from the foreign keys of the inserted
rows) deadlocked; with one lock order (case first) and the retry, every
smear ends classified. SQLite serialises writers, so this runs on MySQL only
(as in CI: DATABASE_URL=mysql://...)."""
import threading

import pytest
from django.db import close_old_connections, connection

from diagnosis import services
from diagnosis.models import Smear
from tests.review.conftest import result

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

WORKERS, SMEARS_PER_WORKER = 4, 15


def test_concurrent_predictions_for_one_case_never_deadlock(smear_factory, case):
    if connection.vendor != "mysql":
        pytest.skip("needs MariaDB/MySQL row locks (DATABASE_URL=mysql://...)")
    smears = [smear_factory(status="processing").pk for _ in range(WORKERS * SMEARS_PER_WORKER)]
    errors, start = [], threading.Barrier(WORKERS)

    def worker(ids):
        try:
            start.wait()
            for pk in ids:
                services.record_prediction(pk, result("Pre"), 5)
        except Exception as exc:  # noqa: BLE001 -- collected for the assertion
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=worker, args=(smears[i::WORKERS],)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert Smear.objects.filter(case=case, status="done").count() == len(smears)
    case.refresh_from_db()
    assert case.status == "done"
