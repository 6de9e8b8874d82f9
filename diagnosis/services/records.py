"""A case's and a patient's own data: the "case opened" entry, audited
edits (used by the admin and the case form), and cancelling a case opened
by mistake."""
from django.db import transaction
from django.utils import timezone

from ..models import AuditEvent, Case
from .audit import record_event
from .case_state import bump_case_version, lock_open_case
from .errors import ReviewError
from .text import check_length


#: Fields of a case and a patient that people may edit (admin), each change audited.
CASE_EDITABLE_FIELDS = ("patient", "accession_number", "specimen_type", "collection_date", "clinical_note")
PATIENT_EDITABLE_FIELDS = ("lab_id", "sex", "birth_year")


def _quoted(value) -> str:
    """A value as the audit trail shows it: in quotation marks, "(empty)" for nothing (never Python's repr)."""
    return f"“{value}”" if value else "(empty)"


def _audit_value(obj, field):
    value = getattr(obj, field)
    if hasattr(obj, f"get_{field}_display"):
        return getattr(obj, f"get_{field}_display")()
    return "" if value is None else str(value)


def _apply_changes(obj, changes) -> list[tuple[str, str, str]]:
    """Set each field on obj; return (field, before, after) for those whose shown value changed."""
    changed = []
    for field, value in changes.items():
        before = _audit_value(obj, field)
        setattr(obj, field, value)
        after = _audit_value(obj, field)
        if before != after:
            changed.append((field, before, after))
    return changed


def record_case_opened(case: Case, user) -> AuditEvent:
    """First entry of a case's audit trail: who opened it, for which patient,
    with which accession number and note. Call it in the transaction that
    creates the case (the case form and the admin do)."""
    return record_event(case, AuditEvent.Action.CASE_OPENED, actor=user, new_value=case.accession_number,
                        detail=f"Patient {case.patient.lab_id}; clinical note: {_quoted(case.clinical_note)}")


def update_case(case: Case, user, **changes) -> Case:
    """Change a case's own data (patient, accession number, specimen type,
    collection date, clinical note),
    recording one audit event per changed field with before and after. A
    signed-out case is refused (CaseLocked): its data changes only through an
    addendum. A change moves the case's review_version: these fields are
    signed with the report, so a sign-out from a page that showed the old
    ones is refused. Used by the admin; call it from a shell the same way."""
    unknown = set(changes) - set(CASE_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable on a case: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        locked = lock_open_case(case)
        changed = _apply_changes(locked, changes)
        for field, before, after in changed:
            record_event(locked, AuditEvent.Action.CASE_CHANGED, actor=user, old_value=before,
                         new_value=after, detail=f"{Case._meta.get_field(field).verbose_name}: {_quoted(before)} → {_quoted(after)}")
        if changed:
            locked.full_clean(validate_unique=True)
            locked.save(update_fields=[field for field, _, _ in changed] + ["updated_at"])
            bump_case_version(locked)
    case.refresh_from_db()
    return case


def update_patient(patient, user, **changes):
    """Change a patient's data, recording each changed field with before and
    after in the audit trail of every case of the patient. Signed-out reports
    keep the patient identifier they were signed with
    (Case.signed_out_patient_lab_id)."""
    from ..models import Patient

    unknown = set(changes) - set(PATIENT_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"Not editable on a patient: {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        cases = list(Case.objects.select_for_update().filter(patient=patient).order_by("pk"))
        locked = Patient.objects.select_for_update().get(pk=patient.pk)
        changed = _apply_changes(locked, changes)
        for field, before, after in changed:
            label = Patient._meta.get_field(field).verbose_name
            for case in cases:
                record_event(case, AuditEvent.Action.PATIENT_CHANGED, actor=user, old_value=before,
                             new_value=after, detail=f"Patient {label}: {_quoted(before)} → {_quoted(after)}")
        if changed:
            locked.full_clean(validate_unique=True)
            locked.save(update_fields=[field for field, _, _ in changed])
            for case in cases:
                if not case.is_signed_out:
                    bump_case_version(case)
    patient.refresh_from_db()
    return patient


CANCEL_REASON_MAX_LENGTH = 500


def cancellable(case: Case) -> bool:
    """A case may be cancelled while it is open (not signed out, not cancelled) and holds no image."""
    return not case.is_signed_out and not case.is_cancelled and not case.smears.exists()


def cancel_case(case: Case, user, reason) -> Case:
    """Cancel a case opened by mistake (wrong patient, a second accession for the same specimen...), before any
    image was kept in it. Nothing is deleted: the case stays with its audit trail, shows as cancelled, and takes
    no image, review or edit any more. A case with images, or signed out, is refused (ReviewError): its data is
    corrected instead, or an addendum written. A reason is required."""
    reason = check_length((reason or "").strip(), CANCEL_REASON_MAX_LENGTH, "The reason")
    if not reason:
        raise ReviewError("Say why the case is cancelled.")
    with transaction.atomic():
        locked = lock_open_case(case)  # refuses a signed-out or cancelled case with its own message
        if not cancellable(locked):
            raise ReviewError(f"Case {locked.accession_number} holds images: it cannot be cancelled. Correct its "
                              "data instead (patient, accession number), or mark images not assessable.")
        locked.cancelled_at, locked.cancelled_by, locked.cancel_reason = timezone.now(), user, reason
        locked.save(update_fields=["cancelled_at", "cancelled_by", "cancel_reason", "updated_at"])
        record_event(locked, AuditEvent.Action.CASE_CANCELLED, actor=user, reason=reason)
    case.refresh_from_db()
    return case
