from django import template

from diagnosis import formatting, selectors

register = template.Library()


@register.filter
def label_display(label):
    """Human name of a model label (e.g. "Pre" -> "Pre-B")."""
    return selectors.label_display(label) if label else ""


@register.filter
def audit_change(event):
    """(before, after) for an audit row's Change column, or None (selectors.audit_change_display)."""
    return selectors.audit_change_display(event)


@register.filter
def get_item(mapping, key):
    """mapping[key], or None (for JSON probabilities in templates)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def when(value):
    """A datetime in the portal's one format, with the time zone."""
    return formatting.format_when(value)


@register.filter
def day(value):
    return formatting.format_date(value)


@register.filter
def person(user):
    """A user's display name (title and full name, else the e-mail address)."""
    return formatting.person_name(user)


@register.filter
def signer(case):
    """The name of the person who signed the case out."""
    return formatting.signer_name(case)
