"""The load test behind `manage.py loadtest`: real images queued through the
upload service against the running workers, timed from upload to result.

The smears go into a fresh case of a dedicated, clearly named patient
(LOADTEST) owned by a dedicated account that cannot sign in; afterwards every
smear is marked not assessable, so the case leaves the review queue and counts
in no statistic or export. (Audit entries keep cases from being deleted.)
"""
import hashlib
import os
import platform
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from . import services
from .models import Case, Patient, Prediction, Smear

LOADTEST_EMAIL = "loadtest@leukportal.invalid"
LOADTEST_LAB_ID = "LOADTEST"
ACCESSION_PREFIX = "LOADTEST-"
CLOSING_REASON = "Load test image (manage.py loadtest), not a patient sample."
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
DATA = Path(settings.BASE_DIR).parent / "shared" / "data"
DEFAULT_DATA = {Smear.Kind.FIELD: DATA / "taleqani-all", Smear.Kind.CELL: DATA / "cnmc-fold1"}


class LoadTestError(Exception):
    """The load test cannot run as asked; the message says why."""


def pick_images(folder, n, seed=0):
    """n image files with distinct contents (one case takes an image once), drawn at random with `seed`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadTestError(f"No image folder at {folder} (give one with --data).")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    random.Random(seed).shuffle(paths)
    picked, seen = [], set()
    for path in paths:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            picked.append((path.name, data))
        if len(picked) == n:
            return picked
    raise LoadTestError(f"{folder} holds only {len(picked)} distinct images; {n} were asked for.")


def check_database(allow_real_data=False):
    """Refuse a database where the load test would get in the way: one without
    any account yet (the first sign-up must still become the administrator),
    or, unless allowed, one with real cases (reviewers would be notified of the
    load-test case while it is classified)."""
    User = get_user_model()
    if not User.objects.exclude(email=LOADTEST_EMAIL).exists():
        raise LoadTestError("This database has no account yet; the first sign-up must become the administrator. "
                            "Create one first (sign up, or manage.py createsuperuser).")
    real = Case.objects.exclude(created_by__email=LOADTEST_EMAIL).count()
    if real and not allow_real_data:
        raise LoadTestError(f"This database holds {real} real case(s). Run the load test on a database of its own "
                            "(DATABASE_URL=...), or pass --allow-real-data: its case is marked and closed, but "
                            "reviewers get a notification while it is classified.")


def new_case():
    """A fresh case for one run (a case takes each image once) under the load-test patient and account."""
    User = get_user_model()
    user, created = User.objects.get_or_create(email=LOADTEST_EMAIL, defaults={"is_active": False,
                                                                              "full_name": "Load test"})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    patient, _ = Patient.objects.get_or_create(lab_id=LOADTEST_LAB_ID, defaults={"created_by": user})
    if patient.created_by_id != user.pk:
        raise LoadTestError(f"A patient {LOADTEST_LAB_ID} exists that the load test did not create; not touching it.")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    case = Case.objects.create(
        patient=patient, created_by=user, accession_number=f"{ACCESSION_PREFIX}{stamp}-{uuid.uuid4().hex[:6]}",
        clinical_note="Synthetic load test (manage.py loadtest): not a patient case.",
    )
    return case, user


@dataclass
class Run:
    case: Case
    kind: str
    queued_at: dict = field(default_factory=dict)  # smear id -> wall time its upload began
    upload_started: float = 0.0
    upload_finished: float = 0.0
    rejected: list = field(default_factory=list)


def queue(case, user, images, *, kind, per_upload):
    """Upload the images in batches of `per_upload` through services.add_smears,
    as the upload view does. Each smear's clock starts when its upload began,
    as a person's would when they press "Upload": the checks and storing of
    its batch count, and a worker may finish it before add_smears returns."""
    run = Run(case=case, kind=kind, upload_started=time.time())
    for start in range(0, len(images), per_upload):
        uploads = [SimpleUploadedFile(name, data) for name, data in images[start:start + per_upload]]
        began = time.time()
        outcome = services.add_smears(case, uploads, user, kind=kind)
        run.queued_at.update({smear.pk: began for smear in outcome.accepted})
        run.rejected += outcome.rejected
    run.upload_finished = time.time()
    return run


def wait(run, timeout, poll=0.2, progress=None):
    """Wait until every smear of the run is done or failed, or `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    pending = Smear.objects.filter(case=run.case, status__in=[Smear.Status.QUEUED, Smear.Status.PROCESSING])
    while time.monotonic() < deadline:
        left = pending.count()
        if progress:
            progress(len(run.queued_at) - left, len(run.queued_at))
        if not left:
            return True
        time.sleep(poll)
    return False


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100)
    return ordered[int(rank) - 1]


def summarise(run):
    """The run's numbers: throughput from the first upload to the last result,
    upload-to-result latency (result: the prediction stored, or the failure)."""
    smears = Smear.objects.filter(case=run.case)
    finished_at = {pk: created.timestamp() for pk, created in
                   Prediction.objects.filter(smear__case=run.case).values_list("smear_id", "created_at")}
    failures = {}
    for pk, updated, error in smears.filter(status=Smear.Status.FAILED).values_list("pk", "updated_at", "error"):
        finished_at[pk] = updated.timestamp()
        failures[pk] = error
    latencies = sorted(finished_at[pk] - run.queued_at[pk] for pk in finished_at if pk in run.queued_at)
    last = max(finished_at.values(), default=None)
    span = (last - run.upload_started) if last else None
    heatmaps = Prediction.objects.filter(smear__case=run.case).exclude(heatmap="").count()
    return {
        "started_at": datetime.fromtimestamp(run.upload_started, tz=dt_timezone.utc).isoformat(timespec="seconds"),
        "case": run.case.accession_number,
        "kind": run.kind,
        "smears": len(run.queued_at),
        "rejected": len(run.rejected),
        "finished": len(finished_at),
        "failed": len(failures),
        "unfinished": len(run.queued_at) - len(finished_at),
        "failure_reasons": sorted(set(failures.values()))[:10],
        "upload_s": round(run.upload_finished - run.upload_started, 3),
        "first_upload_to_last_result_s": round(span, 3) if span else None,
        "throughput_smears_per_s": round(len(finished_at) / span, 2) if span else None,
        "latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
            "max": round(latencies[-1], 3),
        } if latencies else None,
        # (seconds after the first upload its upload began, seconds after the first upload it finished), for the plot
        "timeline": sorted((round(run.queued_at[pk] - run.upload_started, 3), round(t - run.upload_started, 3))
                           for pk, t in finished_at.items() if pk in run.queued_at),
        "heatmaps_stored_at_end": heatmaps,
    }


def close(run, user):
    """Mark every finished smear of the run not assessable: the case leaves the
    review queue and counts nowhere. Returns how many were marked."""
    marked = 0
    for smear in Smear.objects.filter(case=run.case, status__in=[Smear.Status.DONE, Smear.Status.FAILED],
                                      not_assessable=False):
        services.mark_not_assessable(smear, user, CLOSING_REASON)
        marked += 1
    return marked


def configuration():
    """What the numbers depend on, without credentials."""
    broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
    return {
        "database": connection.vendor,
        "broker": broker,
        "batch_size": settings.SMEAR_BATCH_SIZE,
        "queue": settings.CELERY_TASK_DEFAULT_QUEUE,
        "heatmap_queue": settings.CELERY_HEATMAP_QUEUE,
    }


def hardware():
    """The machine the load test ran on (the workers' machine when they run here)."""
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return {"cpu": model or platform.processor(), "cores": cores, "memory_gib": _memory_gib(),
            "python": platform.python_version(), "system": platform.platform()}


def _memory_gib():
    status = _read_status_file("/proc/meminfo")
    kib = status.get("MemTotal")
    return round(kib / 1024 / 1024, 1) if kib else None


def _read_status_file(path):
    """{"VmRSS": kib, ...} from a /proc status-like file (values in kB)."""
    values = {}
    try:
        with open(path) as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    values[key] = int(parts[0])
    except OSError:
        pass
    return values


def worker_memory(proc=Path("/proc")):
    """Resident memory of every Celery worker process on this machine, read
    from /proc/<pid>/status: VmRSS now, VmHWM the peak since it started. A
    worker is a main process plus its pool processes (those whose parent is
    a worker too); the queue tells the classification and heat-map workers apart."""
    found = {}
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if not any(Path(w).name == "celery" or w.endswith("celery") for w in words[:3]) or "worker" not in words:
            continue
        status = _read_status_file(entry / "status")
        ppid = status.get("PPid")
        queue = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-Q", "--queues")), "")
        found[int(entry.name)] = {"pid": int(entry.name), "ppid": ppid, "queue": queue,
                                  "rss_mib": round(status.get("VmRSS", 0) / 1024, 1),
                                  "peak_rss_mib": round(status.get("VmHWM", 0) / 1024, 1)}
    for info in found.values():
        info["role"] = "pool process" if info["ppid"] in found else "main process"
        info["worker"] = "heat maps" if "heatmap" in info["queue"] else "classification"
    return sorted(found.values(), key=lambda i: (i["worker"], i["role"] != "main process", i["pid"]))
