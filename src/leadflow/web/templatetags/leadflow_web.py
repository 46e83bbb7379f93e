"""Template filters of the marketer UI."""

from django import template

from leadflow.tracking.sources import CHANNEL_LABELS

register = template.Library()


@register.filter
def channel_label(channel: str) -> str:
    """The human name of a source channel ("paid_social" -> "Paid social")."""
    return CHANNEL_LABELS.get(channel, channel) if channel else ""
