"""Appending LeadFlow's own events (stage changes, segment entries…) to the event log."""

from __future__ import annotations

import datetime as dt

from leadflow.core.services import ServiceError


def system_events_append(*, workspace_id: int, now: dt.datetime, items: list[tuple], system: str) -> None:
    """Append events (contact, message id, name, properties) that `system` records about people.

    They go through `events_append`'s checks like any other event and are written already
    processed, on their contact: identity resolution has nothing to learn from them, and
    running them through the pipeline would count them as the person's activity (last seen,
    engagement). Message ids are derived from the row that caused them, so appending again is a
    no-op. Segments read them from the log by name; journeys are told at once (triggers, goals,
    waits for an event), in this transaction.
    """
    from leadflow.contacts.models import Identity
    from leadflow.tracking.ingest import events_append

    if not items:
        return
    need = sorted({contact.pk for contact, *_ in items if not contact.user_id})
    anonymous: dict[int, str] = {}
    if need:
        for contact_id, value in (Identity.objects.filter(workspace_id=workspace_id, contact_id__in=need,
                                                          kind="anonymous_id")
                                  .order_by("contact_id", "pk").values_list("contact_id", "value")):
            anonymous.setdefault(contact_id, value)
    messages, contact_of = [], {}
    for contact, message_id, name, properties in items:
        ident = ({"userId": contact.user_id} if contact.user_id else
                 {"anonymousId": anonymous.get(contact.pk) or f"leadflow-contact-{contact.pk}"})
        messages.append({"type": "track", "event": name, "messageId": message_id, **ident,
                         "timestamp": now.isoformat(), "properties": properties,
                         "context": {"leadflow": {"system": system}}})
        contact_of[message_id] = contact.pk
    result = events_append(workspace=workspace_id, messages=messages, processed=(contact_of, now))
    if result.rejected:
        raise ServiceError(f"{system} events rejected: {result.rejected}")
    from leadflow.journeys.triggers import system_events_seen

    names = {m["messageId"]: (m["event"], m["properties"]) for m in messages}
    system_events_seen(workspace_id=workspace_id, now=now, appended=[
        (event_id, contact_of[message_id], *names[message_id]) for event_id, message_id in result.appended])
