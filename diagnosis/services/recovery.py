"""Recovery: a failed smear queued again by a person (retry_smear), and the
periodic sweep that recovers smears and heat maps left behind by workers that
died (sweep_stale_smears, resend_lost_heatmaps)."""
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import AuditEvent, Case, Smear
from .audit import record_event
from .case_state import _refresh_case_by_id, lock_open_case
from .classification import pending_heatmaps
from .dispatch import enqueue_classification, enqueue_heatmap

logger = logging.getLogger(__name__)


def retry_smear(smear, user=None):
    """Put a failed smear back in the queue. Returns False when it was not
    failed (e.g. someone else retried it already) or is marked not assessable
    (sign-out does not wait for such a smear, so a result could land after the
    case was signed; mark it assessable again first); raises CaseLocked when its
    case is signed out: a signed report must not gain a prediction afterwards."""
    with transaction.atomic():
        lock_open_case(smear.case)  # case first: one lock order
        updated = Smear.objects.filter(pk=smear.pk, status=Smear.Status.FAILED, not_assessable=False).update(
            status=Smear.Status.QUEUED, claimed_at=None, transient_failure=False, updated_at=timezone.now()
        )
        if updated:
            record_event(smear.case, AuditEvent.Action.RETRY, actor=user, smear=smear, old_value=Smear.Status.FAILED,
                         new_value=Smear.Status.QUEUED)
            _refresh_case_by_id(smear.case_id)
            transaction.on_commit(lambda: enqueue_classification(smear.pk))
    return bool(updated)


def sweep_stale_smears(now=None):
    """Recover smears left behind by workers that died.

    * processing for longer than SMEAR_STALE_AFTER_SECONDS (longer than the
      hard task time limit, so no live task can still own it): re-queued, or
      failed once it has used SMEAR_MAX_ATTEMPTS attempts;
    * queued for longer than SMEAR_RESEND_QUEUED_AFTER_SECONDS (the message may
      have been lost, e.g. the broker was down at upload time): message sent
      again; a duplicate is harmless because of claim_smear;
    * failed by a temporary database error (deadlock, lock wait timeout) with
      attempts left: queued again without waiting for a person.

    Returns a dict of counts.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS)
    resend_before = now - timedelta(seconds=settings.SMEAR_RESEND_QUEUED_AFTER_SECONDS)
    max_attempts = settings.SMEAR_MAX_ATTEMPTS
    requeued, failed, resent = [], [], []
    stale = Smear.objects.filter(status=Smear.Status.PROCESSING, claimed_at__lt=stale_before)
    for smear in stale.only("pk", "attempts", "case_id", "claimed_at"):
        still_stale = Smear.objects.filter(pk=smear.pk, status=Smear.Status.PROCESSING, claimed_at=smear.claimed_at)
        with transaction.atomic():
            Case.objects.select_for_update().filter(pk=smear.case_id).first()  # case first: one lock order
            if smear.attempts >= max_attempts:
                reason = (
                    f"Classification did not finish after {smear.attempts} attempts "
                    "(the worker stopped or ran out of time each time)."
                )
                if still_stale.update(status=Smear.Status.FAILED, error=reason, updated_at=now):
                    failed.append(smear.pk)
                    record_event(Case.objects.get(pk=smear.case_id), AuditEvent.Action.CLASSIFICATION_FAILED,
                                 smear=smear, detail=reason)
                    _refresh_case_by_id(smear.case_id)
            elif still_stale.update(status=Smear.Status.QUEUED, claimed_at=None, updated_at=now):
                requeued.append(smear.pk)
                _refresh_case_by_id(smear.case_id)
                transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
    transient = Smear.objects.filter(status=Smear.Status.FAILED, transient_failure=True, attempts__lt=max_attempts,
                                     not_assessable=False,  # set aside by a pathologist: stays so
                                     case__signed_out_at__isnull=True)  # a signed-out case's smears stay as signed
    for smear in transient.only("pk", "case_id"):
        with transaction.atomic():
            Case.objects.select_for_update().filter(pk=smear.case_id).first()
            if Smear.objects.filter(pk=smear.pk, status=Smear.Status.FAILED, transient_failure=True,
                                    not_assessable=False).update(
                status=Smear.Status.QUEUED, claimed_at=None, transient_failure=False, updated_at=now
            ):
                requeued.append(smear.pk)
                record_event(Case.objects.get(pk=smear.case_id), AuditEvent.Action.RETRY, smear=smear,
                             old_value=Smear.Status.FAILED, new_value=Smear.Status.QUEUED,
                             detail="Queued again by the sweep after a temporary database error.")
                _refresh_case_by_id(smear.case_id)
                transaction.on_commit(lambda pk=smear.pk: enqueue_classification(pk))
    for pk in Smear.objects.filter(status=Smear.Status.QUEUED, updated_at__lt=resend_before).values_list(
        "pk", flat=True
    ):
        # Touch updated_at first so the next sweep does not re-send it at once.
        if Smear.objects.filter(pk=pk, status=Smear.Status.QUEUED).update(updated_at=now):
            if enqueue_classification(pk):
                resent.append(pk)
    if requeued or failed or resent:
        logger.warning("Sweep: re-queued %s, failed %s, re-sent %s", requeued, failed, resent)
    return {"requeued": len(requeued), "failed": len(failed), "resent": len(resent)}


def resend_lost_heatmaps(now=None) -> int:
    """Heat maps lost with their worker or their message: a prediction whose
    heat map is neither stored nor failed SMEAR_STALE_AFTER_SECONDS after it
    was made, last started or last sent gets its message sent again. One that
    workers started SMEAR_MAX_ATTEMPTS times (claim_heatmap counts starts, not
    sends, so a long wait on the heat-map queue never uses attempts up) is
    recorded as unavailable. Run by the periodic sweep task. Returns the
    number of messages sent."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.SMEAR_STALE_AFTER_SECONDS)
    max_attempts = settings.SMEAR_MAX_ATTEMPTS
    lost = pending_heatmaps().filter(
        Q(heatmap_requested_at__isnull=True, created_at__lt=stale_before) | Q(heatmap_requested_at__lt=stale_before)
    )
    sent = []
    for prediction in lost.only("pk", "heatmap_attempts", "heatmap_requested_at", "task", "label"):
        claim = pending_heatmaps().filter(pk=prediction.pk, heatmap_attempts=prediction.heatmap_attempts,
                                          heatmap_requested_at=prediction.heatmap_requested_at)
        if prediction.heatmap_attempts >= max_attempts:
            claim.update(heatmap_error=f"Heat map unavailable: the worker stopped while computing it "
                                       f"({prediction.heatmap_attempts} attempts).")
        elif claim.update(heatmap_requested_at=now):  # not again before it is stale once more
            if enqueue_heatmap(prediction):
                sent.append(prediction.pk)
    if sent:
        logger.warning("Sweep: heat maps requested again for predictions %s", sent)
    return len(sent)
