"""`{% contact_messages contact %}`: a contact's recent emails and each one's lifecycle, on the profile."""

from django import template
from django.db.models import Prefetch

from leadflow.messaging.models import Message, MessageEvent

register = template.Library()

RECENT = 10
# Kinds shown as a step of the lifecycle, in order; repeats (opens, clicks) are counted.
GOOD = {"sent", "delivered", "opened", "clicked"}
BAD = {"bounced", "soft_bounced", "complained", "unsubscribed", "failed", "blocked", "review"}


def _steps(message: Message) -> list[dict]:
    steps: list[dict] = []
    for event in message.events.all():
        last = steps[-1] if steps else None
        if last and last["kind"] == event.kind and last["machine"] == event.machine:
            last["count"] += 1
            continue
        steps.append({"kind": event.kind, "label": event.kind.replace("_", " "), "at": event.at,
                      "machine": event.machine, "count": 1, "url": event.url,
                      "tone": "good" if event.kind in GOOD else ("bad" if event.kind in BAD else ""),
                      "reason": (event.detail or {}).get("machine_reason") or (event.detail or {}).get("status")
                      or (event.detail or {}).get("reason") or ""})
    return steps


@register.inclusion_tag("web/email/tracking/contact_messages.html")
def contact_messages(contact):
    messages = list(Message.objects.filter(workspace_id=contact.workspace_id, contact=contact)
                    .select_related("template", "version")
                    .prefetch_related(Prefetch("events", queryset=MessageEvent.objects.order_by("at", "pk")))
                    .order_by("-pk")[:RECENT])
    total = Message.objects.filter(workspace_id=contact.workspace_id, contact=contact).count() if len(messages) == RECENT \
        else len(messages)
    return {"rows": [{"message": m, "steps": _steps(m)} for m in messages], "total": total, "contact": contact}
