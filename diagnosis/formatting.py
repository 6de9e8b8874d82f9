"""How the portal writes times and people: one format for every page,
report, message and admin string. Imports only Django; models, services,
reports and templates use it.
"""
from django.utils import timezone
from django.utils.dateformat import format as date_format

#: Every time in the portal: local time of settings.TIME_ZONE with its zone name.
DATETIME_FORMAT = "Y-m-d H:i T"
DATE_FORMAT = "Y-m-d"


def format_when(value) -> str:
    """A datetime as "2026-11-24 09:05 CET" in settings.TIME_ZONE, or "–" for None."""
    if value is None:
        return "–"
    if timezone.is_aware(value):
        value = timezone.localtime(value)
    return date_format(value, DATETIME_FORMAT)


def format_date(value) -> str:
    return date_format(value, DATE_FORMAT) if value else "–"


def person_name(user) -> str:
    """How a person is shown: "Dr Jane Roe" (title and full name), the full
    name alone, or the e-mail address when the account has no name."""
    if user is None:
        return ""
    display = getattr(user, "display_name", None)
    return display if display else getattr(user, "email", str(user))


def signer_name(case) -> str:
    """Who signed this case out, as shown on the case page, report and lists.
    The one place that reads the signer (a snapshot taken at sign-out can
    replace the live account here)."""
    snapshot = getattr(case, "signed_out_by_name", "")
    if snapshot:
        return snapshot
    return person_name(case.signed_out_by) if case.signed_out_by_id else ""
