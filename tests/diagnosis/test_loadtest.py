"""Issue 14, item 5: `manage.py loadtest` queues real images through the
upload service, waits for the running workers and reports throughput,
latency, failures and the workers' memory; its case is marked and closed so
it never mixes with real cases. Here the "workers" are the task run at once
for each message, with a fake predictor."""
import json
import sys
import types

import pytest
from django.core.management import CommandError, call_command

from diagnosis import loadtest, selectors, tasks
from diagnosis.models import Case, Smear
from tests.portal_testutils import image_bytes
from tests.review.conftest import result


class FakePredictor:
    def __init__(self):
        self.calls = []

    def predict(self, images):
        self.calls.append(list(images))
        return [result("Pre") for _ in images]


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "images" / "Pre"
    folder.mkdir(parents=True)
    for seed in range(8):
        (folder / f"img-{seed}.png").write_bytes(image_bytes(size=(96, 96), seed=seed))
    (folder / "copy-of-0.png").write_bytes(image_bytes(size=(96, 96), seed=0))  # the same image twice
    (folder / "notes.txt").write_text("not an image")
    return folder.parent


@pytest.fixture
def workers(monkeypatch):
    """Every classification message runs the task at once (as a worker would, later)."""
    module = types.ModuleType("ml")
    module.ImageError = ValueError
    module.predictor = FakePredictor()
    module.load_predictor = lambda name=None: module.predictor
    monkeypatch.setitem(sys.modules, "ml", module)
    monkeypatch.setattr(tasks.classify_smear, "apply_async", lambda args=None, **kw: tasks.classify_smear(*args))
    return module.predictor


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # messages go out when each upload commits
def test_loadtest_reports_and_closes_its_case(image_folder, workers, make_user, tmp_path, capsys):
    make_user("Admin")  # the first account exists
    out_file = tmp_path / "run.json"
    call_command("loadtest", "--smears", "6", "--per-upload", "4", "--data", str(image_folder),
                 "--json", str(out_file), "--label", "smoke", "--timeout", "30")
    out = capsys.readouterr().out
    assert "6 smears (field), 6 finished, 0 failed, 0 unfinished" in out
    assert "Throughput:" in out and "p95" in out
    data = json.loads(out_file.read_text())
    assert data["finished"] == 6 and data["failed"] == 0 and data["label"] == "smoke"
    assert data["throughput_smears_per_s"] > 0 and 0 <= data["latency_s"]["p50"] <= data["latency_s"]["max"]
    assert len(data["timeline"]) == 6 and data["configuration"]["batch_size"] >= 1
    assert [len(call) for call in workers.calls] == [4, 2]  # one call per upload's batch: the later messages found theirs taken
    case = Case.objects.get(accession_number=data["case"])
    assert case.accession_number.startswith("LOADTEST-") and case.patient.lab_id == "LOADTEST"
    assert not case.created_by.is_active and not case.created_by.has_usable_password()
    assert all(s.not_assessable for s in case.smears.all()) and data["closed"] == 6
    assert case not in [entry.case for entry in selectors.review_queue()]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_each_run_gets_a_fresh_case(image_folder, workers, make_user):
    make_user("Admin")
    for _ in range(2):  # the same images again: a new case, so no duplicate is refused
        call_command("loadtest", "--smears", "3", "--data", str(image_folder), "--timeout", "30")
    assert Case.objects.filter(accession_number__startswith="LOADTEST-").count() == 2
    assert Smear.objects.filter(status="done").count() == 6


def test_loadtest_refuses_a_database_without_an_account(db, image_folder):
    with pytest.raises(CommandError, match="first sign-up must become the administrator"):
        call_command("loadtest", "--smears", "2", "--data", str(image_folder))


def test_loadtest_refuses_a_database_with_real_cases_unless_allowed(case, image_folder):
    with pytest.raises(CommandError, match="holds 1 real case"):
        call_command("loadtest", "--smears", "2", "--data", str(image_folder))
    loadtest.check_database(allow_real_data=True)  # allowed explicitly


def test_too_few_distinct_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.png").write_bytes(image_bytes(seed=1))
    (tmp_path / "b.png").write_bytes(image_bytes(seed=1))
    with pytest.raises(loadtest.LoadTestError, match="only 1 distinct images; 2 were asked for"):
        loadtest.pick_images(tmp_path, 2)


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert (loadtest.percentile(values, 50), loadtest.percentile(values, 95), loadtest.percentile([3.0], 95)) == \
        (50, 95, 3.0)


def test_worker_memory_reads_the_celery_processes_of_proc(tmp_path):
    def process(pid, ppid, argv, rss_kib, peak_kib):
        folder = tmp_path / str(pid)
        folder.mkdir()
        (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (folder / "status").write_text(f"Name:\tx\nPPid:\t{ppid}\nVmHWM:\t{peak_kib} kB\nVmRSS:\t{rss_kib} kB\n")

    celery = ["/srv/.venv/bin/python", "/srv/.venv/bin/celery", "-A", "leukportal", "worker"]
    process(100, 1, celery + ["-Q", "leukportal", "--concurrency", "2"], 204800, 307200)
    process(101, 100, celery + ["-Q", "leukportal", "--concurrency", "2"], 409600, 512000)
    process(200, 1, celery + ["-Q", "leukportal-heatmaps"], 102400, 102400)
    process(300, 1, ["/usr/bin/python", "manage.py", "runserver"], 1, 1)
    (tmp_path / "self").mkdir()
    found = loadtest.worker_memory(tmp_path)
    assert [(p["pid"], p["worker"], p["role"], p["rss_mib"], p["peak_rss_mib"]) for p in found] == [
        (100, "classification", "main process", 200.0, 300.0),
        (101, "classification", "pool process", 400.0, 500.0),
        (200, "heat maps", "main process", 100.0, 100.0),
    ]
