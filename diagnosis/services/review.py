"""Pathologist review before sign-out: confirm or reclassify a smear, mark it
(not) assessable, confirm all remaining, and set the final stage."""
from django.db import transaction
from django.utils import timezone

from ..formatting import person_name
from ..models import REVIEW_COMMENT_MAX_LENGTH, REVIEW_REASON_MAX_LENGTH, AuditEvent, Case, Smear
from ..selectors import confirmable_smears, label_display, labels_for_case, labels_for_smear
from .audit import record_event
from .case_state import _refresh_case_by_id, bump_case_version, lock_open_case
from .errors import ReviewConflict, ReviewError
from .text import check_length


def check_case_version(case, expected_version, *, nothing_was):
    """Refuse (ReviewConflict) a sign-out or draft from a page that showed another version of the case than the
    locked `case` has now; None: no check (callers without a page: scripts, tests). `nothing_was` ends the
    message ("signed", "saved")."""
    if expected_version is None or expected_version == case.review_version:
        return
    stage = label_display(case.final_stage) if case.final_stage else "still open"
    comment = case.review_comment if len(case.review_comment) <= 300 else case.review_comment[:300] + "…"
    draft = f"final stage {stage}, " + (f"comment “{comment}”" if comment else "no comment")
    raise ReviewConflict(
        "The case changed since you opened this page: a smear was reviewed or marked (not) assessable, the draft "
        "was saved, the case's or patient's data was corrected, or an addendum changed the final stage, by someone "
        "else or in another window (the final stage "
        f"and comment are now: {draft}). "
        f"Reload to see the changes; nothing was {nothing_was}."
    )


def review_smear(smear, user, label, reason="", *, expected_version=None):
    """Confirm (label == the model's) or reclassify one smear. A reason is
    required when the label differs from the model's. Refused once the case
    is signed out. `expected_version` is the smear's review_version the form
    showed: when another review was saved since, ReviewConflict is raised
    instead of silently overwriting it (optimistic locking). Returns the
    audit event."""
    reason = check_length((reason or "").strip(), REVIEW_REASON_MAX_LENGTH, "The reason")
    with transaction.atomic():
        case = lock_open_case(smear.case)
        smear = Smear.objects.select_for_update().select_related("prediction").get(pk=smear.pk)
        if smear.status != Smear.Status.DONE or not hasattr(smear, "prediction"):
            raise ReviewError("Only a classified smear can be reviewed.")
        if expected_version is not None and expected_version != smear.review_version:
            who = person_name(smear.reviewed_by) if smear.reviewed_by else "Someone else"
            raise ReviewConflict(
                f"{who} reviewed this smear meanwhile (now “{label_display(smear.review_label)}”); "
                "your change was not saved. Look at the current review and submit again if needed."
            )
        allowed = labels_for_smear(smear)
        if not label:
            raise ReviewError("Choose a label for the smear.")
        if label not in allowed:
            names = ", ".join(label_display(choice) for choice in allowed)
            raise ReviewError(f"“{label}” is not a label of this smear's model ({names}).")
        if smear.not_assessable:
            raise ReviewError("This smear is marked not assessable; mark it assessable again to label it.")
        model_label, in_domain = smear.prediction.label, smear.prediction.in_domain
        # Outside its domain the model made no suggestion: there is nothing to confirm or to argue against.
        if label != model_label and not reason and in_domain:
            raise ReviewError("A reason is required when you change the model's label.")
        # The old value is what the smear showed: the model's label only where it was a suggestion.
        previous = smear.review_label or (model_label if in_domain else "")
        smear.review_label, smear.review_reason = label, reason
        smear.reviewed_by, smear.reviewed_at = user, timezone.now()
        smear.review_version += 1
        smear.save(update_fields=["review_label", "review_reason", "reviewed_by", "reviewed_at", "review_version",
                                  "updated_at"])
        bump_case_version(case)
        if not in_domain:
            action = AuditEvent.Action.LABELLED
        else:
            action = AuditEvent.Action.CONFIRM if label == model_label else AuditEvent.Action.OVERRIDE
        return record_event(
            case, action, actor=user, smear=smear, old_value=previous, new_value=label, reason=reason,
            model_version=f"{smear.prediction.model_name} {smear.prediction.model_version}".strip(),
        )


NOT_ASSESSABLE_REASON_MAX = 500


def mark_not_assessable(smear, user, reason):
    """Mark a classified or failed smear "not assessable" (a reason is required). It then counts nowhere:
    not in the suggestion, the screening summary, sign-out requirements, report counts or the export.
    Refused once the case is signed out. Returns the audit event."""
    reason = check_length((reason or "").strip(), NOT_ASSESSABLE_REASON_MAX, "The reason")
    if not reason:
        raise ReviewError("Say why the smear is not assessable.")
    with transaction.atomic():
        case = lock_open_case(smear.case)
        smear = Smear.objects.select_for_update().get(pk=smear.pk)
        if smear.status not in (Smear.Status.DONE, Smear.Status.FAILED):
            raise ReviewError("Only a classified or failed smear can be marked not assessable.")
        if smear.not_assessable:
            raise ReviewError("This smear is already marked not assessable.")
        smear.not_assessable, smear.not_assessable_reason = True, reason
        smear.not_assessable_by, smear.not_assessable_at = user, timezone.now()
        smear.save(update_fields=["not_assessable", "not_assessable_reason", "not_assessable_by", "not_assessable_at",
                                  "updated_at"])
        bump_case_version(case)
        event = record_event(case, AuditEvent.Action.NOT_ASSESSABLE, actor=user, smear=smear,
                             old_value=smear.review_label or "", new_value="not assessable", reason=reason)
        _refresh_case_by_id(case.pk)
    return event


def mark_assessable(smear, user, reason=""):
    """Undo "not assessable" before sign-out (audited); the smear needs a review again."""
    reason = check_length((reason or "").strip(), NOT_ASSESSABLE_REASON_MAX, "The reason")
    with transaction.atomic():
        case = lock_open_case(smear.case)
        smear = Smear.objects.select_for_update().get(pk=smear.pk)
        if not smear.not_assessable:
            raise ReviewError("This smear is not marked not assessable.")
        previous = smear.not_assessable_reason
        smear.not_assessable, smear.not_assessable_reason = False, ""
        smear.not_assessable_by, smear.not_assessable_at = None, None
        smear.save(update_fields=["not_assessable", "not_assessable_reason", "not_assessable_by", "not_assessable_at",
                                  "updated_at"])
        bump_case_version(case)
        event = record_event(case, AuditEvent.Action.ASSESSABLE, actor=user, smear=smear,
                             old_value="not assessable", new_value="assessable",
                             reason=reason or f"was: {previous}")
        _refresh_case_by_id(case.pk)
    return event


def confirm_remaining(case: Case, user, *, expected_version=None) -> list:
    """Confirm the model's label on every classified smear of the case that
    nobody has reviewed yet ("confirm all remaining"). Each smear goes
    through review_smear, so each gets its own audit event, exactly as if
    confirmed one by one; smears already reviewed keep their label. All or
    nothing: refused as a whole (CaseLocked) once the case is signed out.
    Each confirmation moves the case's review_version (review_smear).
    `expected_version` is the case's review_version the page showed: the
    smears it would confirm are those that page listed, so a page older than
    a review or an assessability change is refused (ReviewConflict) rather
    than confirming, in the pathologist's name, smears they never saw.
    Returns the audit events, in smear order."""
    with transaction.atomic():
        locked = lock_open_case(case)
        check_case_version(locked, expected_version, nothing_was="confirmed")
        return [review_smear(smear, user, smear.prediction.label) for smear in confirmable_smears(case)]


def set_final_stage(case, user, final_stage, comment="", *, expected_version=None):
    """Set (before sign-out) the case's final stage and the comment: a draft, so the stage may still be open
    ("") while the comment is kept; sign-out asks for the stage. `expected_version` is the case's review_version
    the form showed: when the review or the draft changed since, ReviewConflict is raised and nothing is saved
    (another pathologist's draft is not overwritten unseen); None: no check."""
    with transaction.atomic():
        locked = lock_open_case(case)
        check_case_version(locked, expected_version, nothing_was="saved")
        apply_final_stage(locked, user, final_stage, comment, draft=True)
    case.refresh_from_db()
    return case


def apply_final_stage(case, user, final_stage, comment, draft=False):
    """The final stage is a staging label. A case with no blood-smear field
    (single cells only) has no stage: its final stage stays empty and its
    result is the reviewed screening summary. A draft may leave the stage
    open (""). A change of either moves the case's review_version."""
    comment = check_length((comment or "").strip(), REVIEW_COMMENT_MAX_LENGTH, "The comment")
    allowed = labels_for_case(case)
    if not case.has_field_smears():
        if final_stage:
            raise ReviewError("This case has only single cells: it has no stage; its result is the screening summary.")
    elif final_stage not in allowed and not (draft and final_stage == ""):
        names = ", ".join(label_display(stage) for stage in allowed)
        raise ReviewError(f"Choose a final stage among {names or '(no classified smear)'}.")
    if final_stage != case.final_stage:
        record_event(case, AuditEvent.Action.FINAL_STAGE, actor=user, old_value=case.final_stage,
                     new_value=final_stage, reason=comment)
    if (final_stage, comment or "") != (case.final_stage, case.review_comment):
        bump_case_version(case)
    case.final_stage, case.review_comment = final_stage, comment or ""
    case.save(update_fields=["final_stage", "review_comment", "updated_at"])
