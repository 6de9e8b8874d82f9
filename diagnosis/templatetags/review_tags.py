from django import template

from diagnosis import services

register = template.Library()


@register.filter
def label_display(label):
    """Human name of a model label (e.g. "Pre" -> "Pre-B")."""
    return services.label_display(label) if label else ""


@register.filter
def get_item(mapping, key):
    """mapping[key], or None (for JSON probabilities in templates)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None
