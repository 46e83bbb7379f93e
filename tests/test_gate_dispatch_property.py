"""Property, end to end: across random people, topics, consent histories, suppressions, pauses,
caps, quiet hours and messages at random clock times, the real dispatcher, sending to a real SMTP
server on loopback, never delivers a message the independent reference (`gate_reference.py`)
would stop, delivers each message it marks sent exactly once, and never lets a person's
marketing email in a day or a week exceed the caps or go out in their quiet hours.

The scenarios are those of `test_gate_property.py`; here every message also has an approved
template version, so it goes the whole way: claim, gate, render, sign, SMTP.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from leadflow.core import clock
from leadflow.messaging import dispatch
from leadflow.messaging.models import Message, MessagingSettings, SendingServer, Template, TemplateVersion
from leadflow.messaging.tokens import verp_read

from gate_reference import reference_allowed_at, reference_blocked, reference_facts
from smtp_sink import dispatching_to_sink
from test_gate_property import _build, scenario

HTML = "<p>Hi {{ contact.first_name | default('there') }}</p><p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>"


@pytest.fixture
def sink():
    with dispatching_to_sink("https://lf.example.com") as server:
        yield server


def _message_of(received) -> int:
    """The message a delivery was for, from its VERP envelope sender `bounces+TOKEN@…`."""
    local = received.mail_from.split("@", 1)[0]
    return verp_read(local.split("+", 1)[1])


SEEN: Counter = Counter()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(sc=scenario)
def test_the_dispatcher_never_delivers_what_the_gate_should_stop(db, sink, sc):
    ws, people, messages, now = _build(sc)
    template = Template.objects.create(workspace=ws, name="News", slug="news-e2e")
    version = TemplateVersion.objects.create(workspace=ws, template=template, number=1, subject="News",
                                             html=HTML, status="approved")
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    SendingServer.objects.create(workspace=ws, name="Loopback", url=sink.url, is_default=True, rate_per_second=0)
    MessagingSettings.objects.update_or_create(workspace=ws, defaults={"from_email": "news@acme.test",
                                                                       "from_name": "Acme"})
    ids = [m.pk for m in messages]
    # Examples share the test's transaction: what earlier ones deferred must not go out in this one.
    Message.objects.exclude(pk__in=ids).filter(status__in=["queued", "deferred"]).update(status="cancelled")
    Message.objects.filter(pk__in=ids).update(template=template, version=version, not_before=now)
    blocked_before = {m.pk: reference_blocked(reference_facts(m, now)) for m in Message.objects.filter(pk__in=ids)}
    first = len(sink.messages)

    with clock.use(clock.FrozenClock(now)):
        dispatch.dispatch_run(limit=500)

    delivered = Counter(_message_of(r) for r in sink.messages[first:])
    after = {m.pk: m for m in Message.objects.filter(pk__in=ids)}
    sent = {pk for pk, m in after.items() if m.status == "sent"}
    assert not [m.error for m in after.values() if m.status == "failed"], "nothing fails on a healthy server"
    SEEN["sent"] += len(sent)
    SEEN["marketing sent"] += sum(1 for pk in sent if after[pk].kind == "marketing")
    SEEN["deferred"] += sum(1 for m in after.values() if m.status == "deferred")
    # What was marked sent arrived exactly once; nothing else arrived.
    assert set(delivered) == sent and all(n == 1 for n in delivered.values()), (delivered, sent)
    for pk, message in after.items():
        if blocked_before[pk]:
            assert message.status == "blocked" and pk not in delivered, (message.kind, message.topic, message.error)
        if pk not in sent or message.kind != "marketing":
            continue
        facts = reference_facts(message, now)
        facts.sent.remove(now)  # its own send: the caps count the others
        assert not reference_blocked(facts)
        assert reference_allowed_at(facts, now), ("sent over a cap, in a pause or in quiet hours", facts)


def test_the_scenarios_really_send_and_defer(db):
    """The property above is only as good as its scenarios: across its examples, marketing email
    was really delivered, and some was deferred (caps, pauses, quiet hours)."""
    if not SEEN:
        pytest.skip("runs after the property test in the same session")
    assert SEEN["marketing sent"] > 0 and SEEN["deferred"] > 0, SEEN
