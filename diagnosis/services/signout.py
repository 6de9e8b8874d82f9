"""Sign-out and what follows it: why a case cannot be signed out yet, the
sign-out itself (the case is locked afterwards), and addenda."""
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from ..formatting import person_name
from ..models import ADDENDUM_MAX_LENGTH, AuditEvent, Case, CaseAddendum, Smear
from ..selectors import labels_for_case, screening_summary_text
from .audit import record_event
from .case_state import bump_case_version, lock_open_case
from .classification import close_pending_heatmaps
from .errors import ReviewError
from .review import apply_final_stage, check_case_version
from .text import check_length


def sign_out_problems(case):
    """Why a case cannot be signed out yet (empty list: it can)."""
    problems = []
    # Every smear, assessable or not: a result landing after sign-out would change the signed case.
    if case.smears.filter(status__in=[Smear.Status.QUEUED, Smear.Status.PROCESSING]).exists():
        problems.append("some smears are still being classified")
    # Smears marked not assessable need nothing more: they are left out of every other requirement.
    assessable = case.smears.filter(not_assessable=False)
    counts = {s: assessable.filter(status=s).count() for s in Smear.Status.values}
    if counts[Smear.Status.FAILED]:
        problems.append("some smears failed classification (retry them or mark them not assessable)")
    if not counts[Smear.Status.DONE]:
        problems.append("no assessable smear has been classified")
    unreviewed = assessable.filter(status=Smear.Status.DONE, review_label="").count()
    if unreviewed:
        problems.append(f"{unreviewed} smear(s) not yet confirmed, reclassified or marked not assessable")
    return problems


def sign_out(case, user, final_stage, comment="", *, expected_version=None):
    """Sign the case out with its final stage. Any pathologist (sign_out_case
    permission) may sign out any case; the signer is recorded. The case is
    locked afterwards: further changes go through add_addendum().
    `expected_version` is the case's review_version the form showed: when a
    smear's review or assessability, or the draft, changed since, ReviewConflict
    is raised and nothing is signed (the signer signs what they saw); None: no
    check (callers without a page: scripts, tests). The view always sends it."""
    with transaction.atomic():
        locked = lock_open_case(case)
        check_case_version(locked, expected_version, nothing_was="signed")
        problems = sign_out_problems(locked)
        if problems:
            raise ReviewError("The case cannot be signed out yet: " + "; ".join(problems) + ".")
        apply_final_stage(locked, user, final_stage, comment)
        now = timezone.now()
        locked.signed_out_by, locked.signed_out_at, locked.signed_out_stage = user, now, final_stage
        # Snapshot of the signer and the identifiers as signed: later account or
        # patient edits never change what was signed.
        locked.signed_out_by_name = person_name(user)[:255]  # "Dr Jane Roe", as the portal shows people
        locked.signed_out_by_email = user.email
        locked.signed_out_patient_lab_id = locked.patient.lab_id
        locked.signed_out_patient_sex = locked.patient.sex
        locked.signed_out_patient_birth_year = locked.patient.birth_year
        locked.save(update_fields=["signed_out_by", "signed_out_at", "signed_out_stage", "signed_out_by_name",
                                   "signed_out_by_email", "signed_out_patient_lab_id", "signed_out_patient_sex",
                                   "signed_out_patient_birth_year", "updated_at"])
        close_pending_heatmaps(locked)  # the signed report shows what was seen at sign-out
        record_event(locked, AuditEvent.Action.SIGN_OUT, actor=user, new_value=final_stage, reason=comment,
                     detail=screening_summary_text(locked))
    case.refresh_from_db()
    return case


#: An identical addendum by the same author within this time is taken as the same form sent twice.
DUPLICATE_ADDENDUM_WINDOW = timedelta(minutes=2)


def add_addendum(case, user, text, new_final_stage="", *, expected_version=None):
    """Append an addendum to a signed-out case, optionally changing the final
    stage. The original sign-out (signed_out_stage, signer, time) and earlier
    addenda are kept. The same addendum sent twice in a row by its author
    within DUPLICATE_ADDENDUM_WINDOW is stored once (the first is returned).
    An addendum that changes the final stage moves the case's review_version,
    and one sent from a page older than the case's version (another
    addendum changed the stage meanwhile) is refused (ReviewConflict): the
    stage it replaces must be the one its author saw. A text-only addendum is
    appended whatever the page's age."""
    text = check_length((text or "").strip(), ADDENDUM_MAX_LENGTH, "The addendum")
    if not text:
        raise ReviewError("An addendum needs a text.")
    with transaction.atomic():
        locked = Case.objects.select_for_update().get(pk=case.pk)
        if not locked.is_signed_out:
            raise ReviewError("Addenda are for signed-out cases; change the review directly instead.")
        if new_final_stage and new_final_stage not in labels_for_case(locked):
            raise ReviewError(f"“{new_final_stage}” is not a label of this case's model.")
        latest = locked.addenda.order_by("-created_at", "-pk").first()
        if (latest is not None and latest.author_id == user.pk and latest.text == text
                and (new_final_stage or locked.final_stage) == (latest.new_final_stage or latest.previous_final_stage)
                and timezone.now() - latest.created_at < DUPLICATE_ADDENDUM_WINDOW):
            return latest  # the same form sent twice (a double click, a resent page): addenda cannot be deleted
        if new_final_stage:
            check_case_version(locked, expected_version, nothing_was="added")
        changes = bool(new_final_stage) and new_final_stage != locked.final_stage
        addendum = CaseAddendum.objects.create(
            case=locked, text=text, author=user,
            new_final_stage=new_final_stage if changes else "",
            previous_final_stage=locked.final_stage,
        )
        record_event(
            locked, AuditEvent.Action.ADDENDUM, actor=user, reason=text,
            old_value=locked.final_stage if changes else "", new_value=new_final_stage if changes else "",
        )
        if changes:
            locked.final_stage = new_final_stage
            locked.save(update_fields=["final_stage", "updated_at"])
            bump_case_version(locked)
    case.refresh_from_db()
    return addendum
