"""End to end: a smear posted through the upload view is classified by a real
Celery worker subprocess running the real `ml.load_predictor()`, and the
Prediction lands in the database pytest-django created.

Broker: whatever CELERY_BROKER_URL says (Redis in CI, the filesystem transport
by default), on a queue of its own so no other worker takes the message.
"""
import contextlib
import io
import os
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse

from diagnosis.models import Case, Prediction, Smear
from tests.portal_testutils import image_bytes, upload

REPO = Path(__file__).resolve().parents[2]
REAL_IMAGES = REPO.parent / "shared" / "data" / "taleqani-all" / "Pre"
TIMEOUT_S = int(os.environ.get("E2E_TIMEOUT_S", "240"))


def broker_unreachable_reason():
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://")):
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
        except Exception as exc:  # noqa: BLE001 - any failure means unreachable
            return f"Redis broker {url} is not reachable: {exc}"
    return None


def database_url():
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    if connection.vendor == "mysql":
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        return f"mysql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 3306}/{db['NAME']}"
    pytest.skip(f"no worker configuration for database vendor {connection.vendor}")


def smear_image():
    images = sorted(REAL_IMAGES.glob("*.jpg")) if REAL_IMAGES.is_dir() else []
    if images:
        return images[0].name, images[0].read_bytes()
    return "generated.png", image_bytes("PNG", size=(256, 256), seed=42)


@contextlib.contextmanager
def real_worker(queue, settings, log_path):
    """A Celery worker subprocess consuming only `queue` (as the classification
    and the heat-map queue), on the test database and media folder."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_QUEUE=queue,
        CELERY_HEATMAP_QUEUE=queue,
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        DJANGO_SETTINGS_MODULE="leukportal.settings",
    )
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "leukportal", "worker", "--pool", "solo", "--concurrency", "1",
             "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", "INFO", "-n", f"{queue}@%h"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield worker, log_path
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.mark.real_broker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # keeps the role groups of the data migration
def test_uploaded_smear_is_classified_by_a_real_worker(client, make_user, patient, settings, tmp_path):
    reason = broker_unreachable_reason()
    if reason:
        pytest.skip(reason)
    queue = f"leukportal-e2e-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    technician = make_user("Technician")
    case = Case.objects.create(patient=patient, accession_number="E2E-1", created_by=technician)

    with real_worker(queue, settings, tmp_path / "worker.log") as (worker, log_path):
        name, data = smear_image()
        client.force_login(technician)
        response = client.post(reverse("diagnosis:smear_upload", args=[case.pk]), {"kind": "field", "images": [upload(name, data)]})
        assert response.status_code == 302, response.content[:2000]
        smear = Smear.objects.get(case=case)

        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            smear.refresh_from_db()
            if smear.status in (Smear.Status.DONE, Smear.Status.FAILED) or worker.poll() is not None:
                break
            time.sleep(0.5)
        log_text = log_path.read_text(errors="replace")[-6000:]
        assert worker.poll() is None, f"worker exited early:\n{log_text}"
        assert smear.status == Smear.Status.DONE, f"smear is {smear.status} ({smear.error!r}); worker log:\n{log_text}"

    prediction = Prediction.objects.get(smear=smear)
    probabilities = prediction.probabilities
    assert set(probabilities) == {"Benign", "Early", "Pre", "Pro"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
    assert prediction.label == max(probabilities, key=probabilities.get)
    assert prediction.model_name and prediction.model_version
    assert smear.attempts == 1
    case.refresh_from_db()
    assert case.status == Case.Status.DONE and case.suggested_stage == prediction.label

    # The case page's JSON shows the result (what the browser polls).
    data = client.get(reverse("diagnosis:case_status", args=[case.pk])).json()
    assert data["pending"] is False and data["smears"][0]["stage"] == prediction.label


@pytest.mark.real_broker
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_export_asked_for_in_the_portal_is_zipped_by_a_real_worker(client, make_user, smear_factory, case,
                                                                       settings, tmp_path):
    from diagnosis import services
    from diagnosis.models import ReviewedExport
    from tests.review.conftest import result

    reason = broker_unreachable_reason()
    if reason:
        pytest.skip(reason)
    queue = f"leukportal-e2e-{uuid.uuid4().hex[:8]}"
    settings.CELERY_TASK_DEFAULT_QUEUE = settings.CELERY_HEATMAP_QUEUE = queue
    pathologist = make_user("Pathologist")
    smear = smear_factory(status="processing")
    services.record_prediction(smear.pk, result("Pre"), 5)
    smear.refresh_from_db()
    services.review_smear(smear, pathologist, "Pre")
    services.sign_out(case, pathologist, "Pre", "")
    with real_worker(queue, settings, tmp_path / "worker.log") as (worker, log_path):
        client.force_login(pathologist)
        assert client.post(reverse("diagnosis:exports")).status_code == 302
        export = ReviewedExport.objects.get()
        deadline = time.monotonic() + TIMEOUT_S
        while export.pending and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.5)
            export.refresh_from_db()
        log_text = log_path.read_text(errors="replace")[-6000:]
        assert export.status == ReviewedExport.Status.READY, f"export is {export.status} ({export.error!r}):\n{log_text}"
    response = client.get(reverse("diagnosis:export_download", args=[export.pk]))
    names = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    assert f"reviewed/staging/Pre/{case.accession_number}-{smear.pk}.png" in names
