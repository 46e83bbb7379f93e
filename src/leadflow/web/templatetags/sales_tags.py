"""Sales bits of other pages: the lifecycle panel of a contact, the unread-alert count, durations."""

import datetime as dt

from django import template

from leadflow.lifecycle import selectors as sales_selectors
from leadflow.lifecycle.models import SalesAlert

register = template.Library()


@register.inclusion_tag("web/sales/contact_lifecycle.html")
def contact_lifecycle(contact):
    return {
        "contact": contact,
        "assignment": sales_selectors.lead_get(workspace=contact.workspace, contact_id=contact.pk),
        "history": list(sales_selectors.stage_history(workspace=contact.workspace, contact_id=contact.pk))[-10:],
    }


@register.simple_tag(takes_context=True)
def sales_unread(context) -> int:
    request = context.get("request")
    workspace = context.get("workspace")
    if request is None or workspace is None or not request.user.is_authenticated:
        return 0
    return SalesAlert.objects.filter(workspace=workspace, user=request.user, read_at__isnull=True).count()


@register.filter
def stage_label(stage: str) -> str:
    return (stage or "").replace("_", " ").capitalize() or "—"


@register.filter
def duration(value) -> str:
    """A timedelta as "3 d 4 h", "2 h 5 min" or "12 min"; "overdue by …" for negative ones."""
    if not isinstance(value, dt.timedelta):
        return "—"
    seconds = int(value.total_seconds())
    prefix = "overdue by " if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        text = f"{days} d {hours} h"
    elif hours:
        text = f"{hours} h {minutes} min"
    else:
        text = f"{minutes} min"
    return prefix + text


@register.filter
def dictget(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def iso_time(value) -> str:
    """An ISO 8601 string from an alert's snapshot as "YYYY-MM-DD HH:MM" (UTC)."""
    if not value:
        return ""
    try:
        return dt.datetime.fromisoformat(str(value)).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return str(value)
