"""Celery application for LeukPortal.

All Celery settings live in leukportal/settings.py under the CELERY_ prefix.
"""
import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leukportal.settings")

app = Celery("leukportal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _sweep_on_worker_start(sender=None, **kwargs):
    """A worker that starts re-queues smears orphaned by workers that died."""
    from diagnosis.tasks import sweep_stale_smears

    sweep_stale_smears.delay()
