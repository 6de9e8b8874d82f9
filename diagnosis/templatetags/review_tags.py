from django import template

from diagnosis import services

register = template.Library()


@register.filter
def label_display(label):
    """Human name of a model label (e.g. "Pre" -> "Pre-B")."""
    return services.label_display(label) if label else ""
