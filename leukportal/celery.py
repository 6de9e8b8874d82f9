"""Celery application for LeukPortal.

All Celery settings live in leukportal/settings.py under the CELERY_ prefix.

Threads: every worker sizes the model's threads to its share of the cores by
itself (worker_threads): cores // processes, at least 1. Processes that each
take every core spin-wait on each other (issue 14 measured 2 smears/s with two
processes of two threads on two cores, against 8 with one thread each). The
result goes into the environment of the worker and its pool processes:
ML_RUNTIME_THREADS (read by ml's ONNX runtime) and OMP_NUM_THREADS/MKL_NUM_THREADS
(read by PyTorch when it is first imported), and torch.set_num_threads when
PyTorch is already loaded. ML_RUNTIME_THREADS or OMP_NUM_THREADS set by hand
win over the computed share.
"""
import logging
import os
import sys

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leukportal.settings")

logger = logging.getLogger(__name__)

app = Celery("leukportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

#: The model's threads per process (also what ml.runtime reads).
THREADS_ENV = "ML_RUNTIME_THREADS"
#: Pools whose tasks all run in one process (one model, one forward at a time).
SINGLE_PROCESS_POOLS = ("solo", "threads", "eventlet", "gevent")


def available_cores():
    """Cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def worker_threads(processes, cores=None, environ=None):
    """Threads for the model in each of `processes` worker processes:
    ML_RUNTIME_THREADS or OMP_NUM_THREADS when set by hand, else an equal
    share of the cores, at least 1."""
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = str(environ.get(name, "")).strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cores = cores or available_cores()
    return max(1, cores // max(1, int(processes or 1)))


def apply_worker_threads(threads=None):
    """Put `threads` (default: ML_RUNTIME_THREADS, when a worker set it) into
    the environment and into PyTorch if it is loaded. Importing PyTorch is
    left to whoever needs it: the web process never loads it. Returns the
    number applied, or None when there was nothing to apply."""
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if not value.isdigit() or int(value) < 1:
            return None
        threads = int(value)
    for name in (THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _pool_processes(worker):
    pool = worker.pool_cls
    name = pool if isinstance(pool, str) else f"{getattr(pool, '__module__', '')}.{getattr(pool, '__name__', '')}"
    if any(single in name.lower() for single in SINGLE_PROCESS_POOLS):
        return 1
    concurrency = worker.concurrency
    return concurrency if isinstance(concurrency, int) and concurrency > 0 else available_cores()


@worker_init.connect
def _size_threads_for_the_pool(sender=None, **kwargs):
    """In the worker's main process, before the pool processes are forked (they inherit the environment)."""
    processes = _pool_processes(sender)
    threads = apply_worker_threads(worker_threads(processes))
    logger.info("Model threads: %s per process (%s cores, %s pool processes)", threads, available_cores(), processes)


@worker_process_init.connect
def _apply_threads_in_pool_process(**kwargs):
    apply_worker_threads()


@worker_ready.connect
def _sweep_on_worker_start(sender=None, **kwargs):
    """A worker that starts re-queues smears orphaned by workers that died."""
    from diagnosis.tasks import sweep_stale_smears

    sweep_stale_smears.delay()
