"""A case's state: its status and suggested stage recomputed from its smears
(refresh_case), and the lock every writer of a case takes first
(lock_open_case), and the review version every change to what a sign-out signs
moves on (bump_case_version). Imports models, notifications, formatting and
errors only."""
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from .. import notifications
from ..formatting import format_when
from ..models import Case, Smear
from .errors import CaseLocked


def lock_open_case(case):
    """Lock the case row, then refuse (CaseLocked) if it is cancelled or signed out: the
    check runs under the lock, so a sign-out that committed meanwhile wins.
    Returns the locked case."""
    locked = Case.objects.select_for_update().get(pk=case.pk)
    if locked.is_cancelled:
        raise CaseLocked(f"Case {locked.accession_number} was cancelled on {format_when(locked.cancelled_at)}; "
                         "it takes no changes.")
    if locked.is_signed_out:
        raise CaseLocked(
            f"Case {locked.accession_number} was signed out on {format_when(locked.signed_out_at)}; "
            "changes now go through an addendum."
        )
    return locked


def bump_case_version(case):
    """Move the case's review_version on: called under the case row lock by every change that alters what a
    sign-out would sign (a smear's review or assessability, the draft final stage or comment, the case's or its
    patient's data), so that a finalize
    form shown before it is refused (check_case_version). `case` is the locked instance; it is kept in step."""
    Case.objects.filter(pk=case.pk).update(review_version=F("review_version") + 1)
    case.review_version += 1


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
