"""A broadcast through the real dispatcher to a real SMTP server on loopback (aiosmtpd): the gate
blocks whom it must (and the blocked count shows), a paused broadcast holds, the A/B test group
gets its variants, the winner reaches the rest, every address receives exactly one message, and a
cancelled broadcast sends nothing more."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from leadflow.consent.models import ConsentRecord, Suppression
from leadflow.messaging import broadcasts, dispatch
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import Message

from smtp_sink import sending_to_sink, subjects_by_address
from test_broadcasts import make_template, people, static_list

pytestmark = pytest.mark.django_db


@pytest.fixture
def sink(ws):
    with sending_to_sink(ws.workspace) as server:
        yield server


def test_an_ab_broadcast_end_to_end_through_the_dispatcher(ws, sink, frozen_clock):
    crowd = people(ws, 60)
    Suppression.objects.create(workspace=ws.workspace, email="p7@example.com", reason="hard_bounce")
    ConsentRecord.objects.create(workspace=ws.workspace, contact=crowd[8], topic="marketing", status="withdrawn",
                                 source="test")
    offer_a = make_template(ws, "offer-a", subject="Offer A for {{ contact.first_name }}")
    offer_b = make_template(ws, "offer-b", subject="Offer B for {{ contact.first_name }}")
    b = broadcasts.broadcast_create(workspace=ws.workspace, name="April offer", template=offer_a,
                                    segment=static_list(ws, crowd), variants=[offer_b], test_share=0.5,
                                    decide_after_hours=2, actor="test")
    assert broadcasts.broadcast_counts(broadcast=b, now=frozen_clock.current)["consent_filtered"] == 58
    start = frozen_clock.advance(minutes=10)
    broadcasts.broadcast_schedule(broadcast=b, at=start, actor="test")
    broadcasts.broadcasts_tick(now=start)
    b.refresh_from_db()
    assert b.status == "testing" and Message.objects.filter(broadcast=b).count() == 60

    broadcasts.broadcast_pause(broadcast=b, actor="test")
    dispatch.dispatch_run()
    assert sink.messages == [] and not Message.objects.filter(broadcast=b).exclude(status="queued").exists(), \
        "the dispatcher skips a paused broadcast"
    broadcasts.broadcast_resume(broadcast=b, actor="test")
    dispatch.dispatch_run()
    test_group = Message.objects.filter(broadcast=b, variant__isnull=False)
    assert not test_group.filter(status="queued").exists()
    assert not Message.objects.filter(broadcast=b, variant__isnull=True).exclude(status="queued").exists(), \
        "the rest waits for the winner"
    received = subjects_by_address(sink)
    assert len(received) == test_group.filter(status="sent").count()
    for message in test_group.filter(status="sent").select_related("variant", "contact"):
        assert received[message.to_email] == [f"Offer {message.variant.label} for {message.contact.first_name}"]

    for message in test_group.filter(status="sent", variant__label="B")[:10]:
        message_event_record(message=message, kind="clicked", url="https://acme.example/offer")
    frozen_clock.set(b.decide_at)
    broadcasts.broadcasts_tick(now=b.decide_at)
    b.refresh_from_db()
    assert b.winner.label == "B" and b.result["significant"] is True and b.status == "sending"
    dispatch.dispatch_run()
    broadcasts.broadcasts_tick(now=b.decide_at + dt.timedelta(seconds=15))
    b.refresh_from_db()
    assert b.status == "done"

    received = subjects_by_address(sink)
    statuses = Counter(Message.objects.filter(broadcast=b).values_list("status", flat=True))
    assert statuses == {"sent": 58, "blocked": 2}
    assert set(Message.objects.filter(broadcast=b, status="blocked").values_list("to_email", flat=True)) == {
        "p7@example.com", "p8@example.com"}
    assert len(received) == 58 and all(len(subjects) == 1 for subjects in received.values()), \
        "every address exactly one message, never two variants"
    for message in Message.objects.filter(broadcast=b, variant__isnull=True, status="sent").select_related("contact"):
        assert received[message.to_email] == [f"Offer B for {message.contact.first_name}"]
    stats = broadcasts.broadcast_stats(broadcast=b)
    assert stats["total"]["blocked"] == 2 and stats["total"]["sent"] == 58


def test_a_cancelled_broadcast_sends_nothing_more(ws, sink, frozen_clock):
    crowd = people(ws, 20)
    b = broadcasts.broadcast_create(workspace=ws.workspace, name="News", template=make_template(ws, "news"),
                                    segment=static_list(ws, crowd), actor="test")
    broadcasts.broadcast_send_now(broadcast=b, actor="test")
    dispatch.dispatch_run(limit=5)
    sent = Message.objects.filter(broadcast=b, status="sent").count()
    assert 0 < sent < 20 and len(sink.messages) == sent
    broadcasts.broadcast_cancel(broadcast=b, actor="test")
    dispatch.dispatch_run()
    assert len(sink.messages) == sent
    assert Counter(Message.objects.filter(broadcast=b).values_list("status", flat=True)) == {
        "sent": sent, "cancelled": 20 - sent}
