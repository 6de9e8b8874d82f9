"""The audit trail: record_event is the only writer of AuditEvent rows.
Imports models only."""
from ..models import AuditEvent


def record_event(case, action, *, actor=None, smear=None, old_value="", new_value="", reason="", model_version="",
                 detail=""):
    """Append one entry to a case's audit trail. The only writer of
    AuditEvent rows; call it inside the transaction of the change it records."""
    return AuditEvent.objects.create(
        case=case,
        smear=smear,
        action=action,
        actor=actor if actor is not None and getattr(actor, "is_authenticated", False) else None,
        old_value=str(old_value or "")[:255],
        new_value=str(new_value or "")[:255],
        reason=reason or "",
        model_version=(model_version or "")[:200],
        detail=detail or "",
    )
