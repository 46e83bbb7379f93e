"""Shared helpers for the journey tests: events in through the real pipeline, the clock driven
forward with everything due run (`tick`), templates with an approved version."""

from __future__ import annotations

import datetime as dt
import uuid

from leadflow.contacts.models import Contact
from leadflow.core import clock as clock_module
from leadflow.core.pipeline import process_pending
from leadflow.journeys.engine import journeys_run_due
from leadflow.journeys.models import Enrollment
from leadflow.journeys.services import journey_apply
from leadflow.messaging.models import Template, TemplateVersion
from leadflow.tracking.ingest import events_append

BODY = "<p>Hello {{ contact.first_name }}</p><p><a href='https://acme.example/blog'>Read</a></p>"


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def send(ws, *messages) -> None:
    """Append events now and run what a worker would: the pipeline over them (journey triggers
    included), then the enrollments due now."""
    now = clock_module.now()
    batch = [{"messageId": uuid.uuid4().hex, "timestamp": iso(now), **m} for m in messages]
    result = events_append(workspace=ws.workspace, messages=batch)
    assert not result.rejected, result.rejected
    process_pending(isolate_failures=False)
    journeys_run_due(now=now)


def identify(user: str, **traits) -> dict:
    return {"type": "identify", "userId": user, "traits": traits}


def track(user: str, name: str, **properties) -> dict:
    return {"type": "track", "userId": user, "event": name, "properties": properties}


def page(user: str, path: str) -> dict:
    return {"type": "page", "userId": user, "properties": {"path": path, "url": f"https://acme.example{path}"}}


def contact_of(ws, user: str) -> Contact:
    return Contact.objects.get(workspace=ws.workspace, user_id=user)


def template(ws, slug: str, *, subject: str | None = None, topic: str = "", html: str = BODY) -> Template:
    """A template with an approved version 1, written directly (approval has its own tests)."""
    t = Template.objects.create(workspace=ws.workspace, name=slug.replace("-", " ").title(), slug=slug, topic=topic)
    v = TemplateVersion.objects.create(workspace=ws.workspace, template=t, number=1,
                                       subject=subject or slug.replace("-", " ").capitalize(), html=html,
                                       status="approved")
    t.approved_version = v
    t.save(update_fields=["approved_version"])
    return t


def apply(ws, definition: dict, **kwargs):
    journey, version, _ = journey_apply(workspace=ws.workspace, data=definition, actor="test", **kwargs)
    return journey


def tick(clock, **delta) -> dt.datetime:
    """Move the clock forward and run every enrollment due by then."""
    now = clock.advance(**delta) if delta else clock.current
    journeys_run_due(now=now)
    return now


def at_node(journey) -> dict[str, str]:
    """user id → node of each active enrollment of the journey."""
    return dict(Enrollment.objects.filter(journey=journey, state="active").values_list("contact__user_id", "node"))


def states(journey) -> dict[str, str]:
    return dict(Enrollment.objects.filter(journey=journey).values_list("contact__user_id", "state"))
