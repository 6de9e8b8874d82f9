"""A case's state: its status and suggested stage recomputed from its smears
(refresh_case), and the lock every writer of a case takes first
(lock_open_case). Imports models, notifications and errors only."""
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .. import notifications
from ..formatting import format_when
from ..models import Case, Smear
from .errors import CaseLocked


def lock_open_case(case):
    """Lock the case row, then refuse (CaseLocked) if it is signed out: the
    check runs under the lock, so a sign-out that committed meanwhile wins.
    Returns the locked case."""
    locked = Case.objects.select_for_update().get(pk=case.pk)
    if locked.is_signed_out:
        raise CaseLocked(
            f"Case {locked.accession_number} was signed out on {format_when(locked.signed_out_at)}; "
            "changes now go through an addendum."
        )
    return locked


def refresh_case(case):
    """Recompute a case's status and suggested stage from its smears. Locks
    the case row so concurrent workers serialise their updates."""
    return _refresh_case_by_id(case.pk)


def _refresh_case_by_id(case_id):
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        counts = case.smear_counts()
        if counts[Smear.Status.QUEUED] or counts[Smear.Status.PROCESSING]:
            status = Case.Status.PROCESSING
        elif counts[Smear.Status.FAILED]:
            status = Case.Status.ATTENTION
        elif counts[Smear.Status.DONE]:
            status = Case.Status.DONE
        else:
            status = Case.Status.EMPTY
        stage, confidence, _ = case.compute_suggestion()
        Case.objects.filter(pk=case.pk).update(
            status=status, suggested_stage=stage or "", suggested_confidence=confidence, updated_at=timezone.now()
        )
        previous_status = case.status
        case.status, case.suggested_stage, case.suggested_confidence = status, stage or "", confidence
        notifications.case_refreshed(case, previous_status)
    return case


def _smear_status_item(smear, can_retry):
    prediction = getattr(smear, "prediction", None)
    return {
        "id": smear.pk,
        "status": smear.status,
        "status_display": smear.get_status_display(),
        "error": smear.error,
        "attempts": smear.attempts,
        "can_retry": can_retry and smear.can_retry,
        "kind": smear.kind,
        # "stage" is the model's label for either kind (a stage, or blast/normal).
        "stage": prediction.label if prediction else None,
        "stage_display": prediction.label_display if prediction else None,
        "probabilities": dict(prediction.ordered_probabilities()) if prediction else None,
        "threshold": prediction.threshold if prediction else None,
        "model": f"{prediction.model_name} {prediction.model_version}" if prediction else None,
        "in_domain": prediction.in_domain if prediction else None,
        "domain_score": prediction.domain_score if prediction else None,
        "domain_reason": prediction.domain_reason if prediction else "",
        "not_assessable": smear.not_assessable,
        "not_assessable_reason": smear.not_assessable_reason,
    }


def smears_status_payload(smears, user):
    """Status JSON for any set of smears (the technician's upload queue)."""
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(s, can_retry) for s in smears.select_related("prediction").order_by("-created_at", "-pk")]
    return {
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def case_status_payload(case, user):
    """The JSON the case page polls while smears are being classified."""
    smears = case.smears.select_related("prediction").order_by("created_at", "pk")
    can_retry = user.has_perm("diagnosis.retry_smear")
    items = [_smear_status_item(smear, can_retry) for smear in smears]
    return {
        "case": case.pk,
        "status": case.status,
        "status_display": case.get_status_display(),
        "suggested_stage": case.suggested_stage or None,
        "suggested_stage_display": case.get_suggested_stage_display() if case.suggested_stage else None,
        "suggested_confidence": case.suggested_confidence,
        "screening": case.screening_summary(),
        "pending": any(i["status"] in (Smear.Status.QUEUED, Smear.Status.PROCESSING) for i in items),
        "smears": items,
    }


def search_filter(q):
    return Q(accession_number__icontains=q) | Q(patient__lab_id__icontains=q)
