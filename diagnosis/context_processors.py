"""Values every portal template may use."""
from . import models

#: Length limits of the free texts, for maxlength attributes and "up to N characters" hints.
LIMITS = {
    "reason": models.REVIEW_REASON_MAX_LENGTH,
    "comment": models.REVIEW_COMMENT_MAX_LENGTH,
    "addendum": models.ADDENDUM_MAX_LENGTH,
    "note": models.CLINICAL_NOTE_MAX_LENGTH,
}


def portal(request):
    from django.utils.functional import SimpleLazyObject

    from .notifications import unread_count

    user = getattr(request, "user", None)
    # Lazy: counted only on pages that show the navigation bar.
    return {"limits": LIMITS, "unread_notifications": SimpleLazyObject(lambda: unread_count(user))}
