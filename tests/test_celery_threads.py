"""Issue 14: every worker process sizes the model's threads to its share of
the cores by itself (leukportal.celery), so processes never spin-wait on each
other; the web process never imports PyTorch for it."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from leukportal import celery as portal_celery

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("processes, cores, threads", [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)])
def test_each_process_gets_its_share_of_the_cores(processes, cores, threads):
    assert portal_celery.worker_threads(processes, cores=cores, environ={}) == threads


@pytest.mark.parametrize("environ", [{"ML_RUNTIME_THREADS": "3"}, {"OMP_NUM_THREADS": "3"},
                                     {"ML_RUNTIME_THREADS": "3", "OMP_NUM_THREADS": "1"}])
def test_threads_set_by_hand_win(environ):
    assert portal_celery.worker_threads(2, cores=16, environ=environ) == 3


@pytest.mark.parametrize("value", ["0", "-2", "many", ""])
def test_nonsense_thread_settings_are_ignored(value):
    assert portal_celery.worker_threads(2, cores=4, environ={"ML_RUNTIME_THREADS": value}) == 2


def test_apply_sets_the_environment_and_a_loaded_torch(monkeypatch):
    for name in ("ML_RUNTIME_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, "1")  # recorded, so what the test sets is undone afterwards
        monkeypatch.delenv(name)
    calls = []
    fake_torch = types.SimpleNamespace(get_num_threads=lambda: 8, set_num_threads=calls.append)
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert portal_celery.apply_worker_threads() is None  # nothing configured: nothing changed
    assert calls == []
    assert portal_celery.apply_worker_threads(2) == 2
    assert calls == [2]
    assert {os.environ[n] for n in ("ML_RUNTIME_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")} == {"2"}
    assert portal_celery.apply_worker_threads() == 2  # a pool process reads what its worker set


@pytest.mark.parametrize("pool, concurrency, processes", [("prefork", 2, 2), ("solo", 4, 1), ("threads", 8, 1)])
def test_the_pool_decides_how_many_processes_share_the_cores(pool, concurrency, processes):
    worker = types.SimpleNamespace(pool_cls=pool, concurrency=concurrency)
    assert portal_celery._pool_processes(worker) == processes


def test_the_worker_signal_sizes_the_threads_without_importing_torch():
    """A fresh interpreter: the worker_init handler fills the environment for
    two prefork processes and leaves PyTorch unimported (the pool's processes
    load it later, with these threads)."""
    code = (
        "import os, sys, types, django; django.setup();"
        "from leukportal import celery as c;"
        "c._size_threads_for_the_pool(sender=types.SimpleNamespace(pool_cls='prefork', concurrency=2));"
        "print(os.environ['ML_RUNTIME_THREADS'], os.environ['OMP_NUM_THREADS'], 'torch' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("ML_RUNTIME_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["DJANGO_SETTINGS_MODULE"] = "leukportal.settings"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    expected = max(1, portal_celery.available_cores() // 2)
    assert out.stdout.split() == [str(expected), str(expected), "False"]
