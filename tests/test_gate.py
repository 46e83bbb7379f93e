"""The consent gate: each rule, its order and its wording; deferrals (pause, caps, quiet hours with
DST); transactional and test sends; the batch form's fixed query count; `sendable_contacts`."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from leadflow.consent import services
from leadflow.consent.gate import gate_check, gate_check_many, quiet_hours_end, sendable_contacts
from leadflow.consent.models import ConsentRecord, MarketingPause, OptInRequest, Topic
from leadflow.contacts.models import Contact
from leadflow.core import clock as clock_module
from leadflow.messaging.models import Message, MessagingSettings

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday, 10:00 in Berlin


def person(ws, email: str, **fields) -> Contact:
    return Contact.objects.create(workspace=ws.workspace, email=email, **fields)


def message(ws, contact: Contact | None, *, kind: str = "marketing", topic: str = "", to: str | None = None,
            **fields) -> Message:
    return Message.objects.create(workspace=ws.workspace, contact=contact, kind=kind, topic=topic,
                                  to_email=to if to is not None else contact.email, **fields)


def consent(contact: Contact, topic: str, status: str, at: dt.datetime) -> ConsentRecord:
    return ConsentRecord.objects.create(workspace=contact.workspace, contact=contact, topic=topic, status=status,
                                        source="test", at=at)


def rules(ws, **fields) -> MessagingSettings:
    return MessagingSettings.objects.update_or_create(workspace=ws.workspace, defaults=fields)[0]


def topic(ws, slug: str, **fields) -> Topic:
    return Topic.objects.create(workspace=ws.workspace, slug=slug, name=slug.replace("-", " ").title(), **fields)


def sent(ws, contact: Contact, at: dt.datetime) -> Message:
    return message(ws, contact, status="sent", sent_at=at)


def decide(msg: Message, now: dt.datetime = T0):
    return gate_check(message=msg, now=now)


# --- blocks ------------------------------------------------------------------------------------

def test_nothing_stops_a_plain_marketing_message(ws):
    decision = decide(message(ws, person(ws, "ada@acme.example")))
    assert (decision.action, decision.until) == ("send", None)


@pytest.mark.parametrize("reason", ["hard_bounce", "soft_bounces", "complaint", "manual", "invalid", "erased"])
def test_any_active_suppression_blocks_marketing_and_lifting_it_allows_again(ws, reason):
    ada = person(ws, "Ada@Acme.example")
    services.suppression_add(workspace_id=ws.workspace.pk, email="ADA@acme.example", reason=reason)
    decision = decide(message(ws, ada))
    assert decision.action == "block"
    assert ("erased" in decision.reason) if reason == "erased" else ("suppressed" in decision.reason)
    services.suppression_lift(workspace_id=ws.workspace.pk, email="ada@acme.example", actor="user:1")
    assert decide(message(ws, ada)).action == "send"


def test_a_suppression_in_another_workspace_does_not_count(ws, other_ws):
    services.suppression_add(workspace_id=other_ws.workspace.pk, email="ada@acme.example", reason="complaint")
    assert decide(message(ws, person(ws, "ada@acme.example"))).action == "send"


def test_a_message_whose_person_is_gone_is_blocked(ws):
    ada = person(ws, "ada@acme.example")
    msg = message(ws, ada)
    ada.delete()
    msg.refresh_from_db()
    decision = decide(msg)
    assert decision.action == "block" and "no longer exists" in decision.reason
    stale = message(ws, None, to="bob@acme.example")
    assert decide(stale).action == "block"


def test_withdrawn_marketing_blocks_with_the_date_and_a_later_grant_allows(ws):
    ada = person(ws, "ada@acme.example")
    consent(ada, "marketing", "withdrawn", dt.datetime(2026, 2, 11, 8, 0, tzinfo=UTC))
    decision = decide(message(ws, ada, topic="newsletter"))
    assert decision == decision.__class__("block", "unsubscribed from all marketing on 2026-02-11")
    consent(ada, "marketing", "granted", dt.datetime(2026, 2, 20, tzinfo=UTC))
    assert decide(message(ws, ada)).action == "send"


def test_topic_rules_unsubscribed_opt_in_unknown_and_archived(ws):
    topic(ws, "newsletter")
    topic(ws, "offers", mode="opt_in")
    topic(ws, "old", archived_at=T0 - dt.timedelta(days=3))
    ada = person(ws, "ada@acme.example")
    assert decide(message(ws, ada, topic="newsletter")).action == "send"  # opt-out: no record needed
    consent(ada, "newsletter", "withdrawn", dt.datetime(2026, 11, 2, tzinfo=UTC) - dt.timedelta(days=300))
    assert decide(message(ws, ada, topic="newsletter")).reason == "unsubscribed from newsletter on 2026-01-06"
    offers = decide(message(ws, ada, topic="offers"))
    assert offers.action == "block" and offers.reason == "no opt-in for offers (an opt-in topic)"
    consent(ada, "offers", "granted", T0 - dt.timedelta(days=1))
    assert decide(message(ws, ada, topic="offers")).action == "send"
    unknown = decide(message(ws, ada, topic="webinars"))
    assert unknown.action == "block" and "unknown topic 'webinars'" in unknown.reason
    assert decide(message(ws, ada, topic="old")).reason == "topic 'old' is archived"
    # `marketing` as a message topic means all marketing only.
    assert decide(message(ws, ada, topic="marketing")).action == "send"


def test_the_latest_record_wins_even_when_written_in_the_same_second(ws):
    ada = person(ws, "ada@acme.example")
    topic(ws, "newsletter", mode="opt_in")
    consent(ada, "newsletter", "granted", T0)
    consent(ada, "newsletter", "withdrawn", T0)
    assert decide(message(ws, ada, topic="newsletter")).action == "block"


def test_double_opt_in_topic_needs_the_confirmation(ws, frozen_clock):
    topic(ws, "newsletter", double_opt_in=True)
    ada = person(ws, "ada@acme.example")
    done = services.subscription_set(contact=ada, topic="newsletter", granted=True, source="api",
                                     wording="Yes, send me the newsletter")
    assert done.pending and not ConsentRecord.objects.filter(contact=ada, topic="newsletter").exists()
    decision = decide(message(ws, ada, topic="newsletter"), frozen_clock.current)
    assert decision.action == "block" and decision.reason == "newsletter needs double opt-in and it has not been confirmed"
    from leadflow.consent.links import optin_confirm_url

    token = optin_confirm_url(OptInRequest.objects.get(contact=ada)).rsplit("/", 1)[1]
    services.optin_confirm(token=token, ip="203.0.113.9")
    assert decide(message(ws, ada, topic="newsletter"), frozen_clock.current).action == "send"


def test_double_opt_in_by_country(ws):
    topic(ws, "newsletter", double_opt_in_countries=["DE", "AT"])
    berlin = person(ws, "b@acme.example", country="DE")
    paris = person(ws, "p@acme.example", country="FR")
    nowhere = person(ws, "n@acme.example")
    decision = decide(message(ws, berlin, topic="newsletter"))
    assert decision.action == "block" and decision.reason == "newsletter needs double opt-in in DE and it has not been confirmed"
    assert decide(message(ws, paris, topic="newsletter")).action == "send"
    assert decide(message(ws, nowhere, topic="newsletter")).action == "send"
    consent(berlin, "newsletter", "granted", T0 - dt.timedelta(hours=1))  # recorded on confirmation
    assert decide(message(ws, berlin, topic="newsletter")).action == "send"


def test_blocks_come_before_deferrals(ws):
    rules(ws, quiet_start=dt.time(0, 0), quiet_end=dt.time(23, 59))
    ada = person(ws, "ada@acme.example")
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=T0 + dt.timedelta(days=3))
    consent(ada, "marketing", "withdrawn", T0 - dt.timedelta(days=1))
    assert decide(message(ws, ada)).action == "block"


# --- deferrals -----------------------------------------------------------------------------------

def test_a_pause_defers_until_it_ends(ws):
    ada = person(ws, "ada@acme.example")
    until = T0 + dt.timedelta(weeks=2)
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=until)
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=T0 - dt.timedelta(days=1))  # over
    decision = decide(message(ws, ada))
    assert (decision.action, decision.until) == ("defer", until)
    assert decision.reason == "paused by the person until 2026-03-16 09:00 UTC"
    assert decide(message(ws, ada), until).action == "send"


def test_daily_and_weekly_caps_defer_until_the_count_falls_under(ws):
    rules(ws, cap_per_day=2, cap_per_week=3)
    ada = person(ws, "ada@acme.example")
    bob = person(ws, "bob@acme.example")
    sent(ws, ada, T0 - dt.timedelta(hours=20))
    sent(ws, ada, T0 - dt.timedelta(hours=2))
    message(ws, ada, kind="transactional", status="sent", sent_at=T0 - dt.timedelta(hours=1))  # not counted
    decision = decide(message(ws, ada))
    assert decision.action == "defer" and decision.until == T0 + dt.timedelta(hours=4)
    assert decision.reason == "frequency cap of 2 marketing emails per day reached"
    sent(ws, bob, T0 - dt.timedelta(days=6))
    sent(ws, bob, T0 - dt.timedelta(days=3))
    sent(ws, bob, T0 - dt.timedelta(days=2))
    decision = decide(message(ws, bob))
    assert decision.action == "defer" and decision.until == T0 + dt.timedelta(days=1)
    assert "per week" in decision.reason
    assert decide(message(ws, bob), T0 + dt.timedelta(days=1)).action == "send"
    assert decide(message(ws, bob), T0 + dt.timedelta(days=1) - dt.timedelta(seconds=1)).action == "defer"


def test_a_batch_counts_what_it_lets_through_towards_the_caps(ws):
    rules(ws, cap_per_day=2)
    ada = person(ws, "ada@acme.example")
    bob = person(ws, "bob@acme.example")
    batch = [message(ws, ada), message(ws, bob), message(ws, ada), message(ws, ada)]
    actions = [d.action for d in gate_check_many(messages=batch, now=T0)]
    assert actions == ["send", "send", "send", "defer"]


def test_quiet_hours_in_the_contacts_timezone(ws):
    rules(ws, quiet_start=dt.time(21, 0), quiet_end=dt.time(8, 0), default_timezone="America/New_York")
    berlin = person(ws, "b@acme.example", timezone="Europe/Berlin")
    local = person(ws, "n@acme.example")  # no timezone: the workspace default
    odd = person(ws, "o@acme.example", timezone="Mars/Olympus")  # unknown: the workspace default
    late = dt.datetime(2026, 3, 2, 22, 0, tzinfo=UTC)  # 23:00 in Berlin, 17:00 in New York
    decision = decide(message(ws, berlin), late)
    assert decision.action == "defer" and decision.until == dt.datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    assert decision.reason == "quiet hours 21:00–08:00 Europe/Berlin"
    assert decide(message(ws, local), late).action == "send"
    assert decide(message(ws, odd), late).action == "send"
    night_ny = dt.datetime(2026, 3, 3, 3, 0, tzinfo=UTC)  # 22:00 in New York
    decision = decide(message(ws, local), night_ny)
    assert decision.until == dt.datetime(2026, 3, 3, 13, 0, tzinfo=UTC)
    assert decision.reason == "quiet hours 21:00–08:00 America/New_York"
    early = dt.datetime(2026, 3, 3, 6, 59, tzinfo=UTC)  # 07:59 in Berlin
    assert decide(message(ws, berlin), early).until == dt.datetime(2026, 3, 3, 7, 0, tzinfo=UTC)


def test_quiet_hours_across_daylight_saving_changes():
    import zoneinfo

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    # The night clocks go forward (2026-03-29): 08:00 is at 06:00 UTC, not 07:00.
    assert quiet_hours_end(dt.datetime(2026, 3, 28, 22, 0, tzinfo=UTC), dt.time(21), dt.time(8), berlin) == \
        dt.datetime(2026, 3, 29, 6, 0, tzinfo=UTC)
    # An end inside the gap (02:30 does not exist that night): quiet hours end with the jump to 03:00.
    assert quiet_hours_end(dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC), dt.time(21), dt.time(2, 30), berlin) == \
        dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # The night clocks go back (2026-10-25): 02:10 happens twice; the second time is quiet again
    # until the second 02:30.
    assert quiet_hours_end(dt.datetime(2026, 10, 25, 1, 10, tzinfo=UTC), dt.time(21), dt.time(2, 30), berlin) == \
        dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert quiet_hours_end(dt.datetime(2026, 10, 24, 23, 0, tzinfo=UTC), dt.time(21), dt.time(8), berlin) == \
        dt.datetime(2026, 10, 25, 7, 0, tzinfo=UTC)
    # Daytime quiet hours (start < end).
    assert quiet_hours_end(dt.datetime(2026, 6, 1, 11, 0, tzinfo=UTC), dt.time(12), dt.time(14), berlin) == \
        dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_pause_then_cap_then_quiet_hours_give_the_first_moment_all_allow(ws):
    rules(ws, cap_per_day=1, quiet_start=dt.time(21, 0), quiet_end=dt.time(8, 0), default_timezone="UTC")
    ada = person(ws, "ada@acme.example")
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=T0 + dt.timedelta(hours=1))
    sent(ws, ada, T0 - dt.timedelta(hours=24, minutes=30))  # 08:30 yesterday: out of the window by 10:00
    decision = decide(message(ws, ada))
    assert decision.action == "defer" and decision.until == T0 + dt.timedelta(hours=1)
    assert decision.reason.startswith("paused")
    sent(ws, ada, T0 - dt.timedelta(hours=12, minutes=30))  # 20:30 yesterday: under the cap at 20:30 today
    decision = decide(message(ws, ada))
    assert decision.until == dt.datetime(2026, 3, 2, 20, 30, tzinfo=UTC)  # before quiet hours start
    sent(ws, ada, T0 - dt.timedelta(hours=11, minutes=30))  # 21:30 yesterday: free at 21:30 today, quiet
    decision = decide(message(ws, ada))
    assert decision.until == dt.datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    assert "frequency cap" in decision.reason and "quiet hours" in decision.reason


# --- transactional and test ------------------------------------------------------------------------

def test_transactional_bypasses_consent_pause_caps_and_quiet_hours_but_not_bad_addresses(ws):
    rules(ws, cap_per_day=1, quiet_start=dt.time(0, 0), quiet_end=dt.time(23, 59))
    topic(ws, "newsletter", mode="opt_in", double_opt_in=True)
    ada = person(ws, "ada@acme.example")
    consent(ada, "marketing", "withdrawn", T0 - dt.timedelta(days=1))
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=T0 + dt.timedelta(days=9))
    sent(ws, ada, T0 - dt.timedelta(hours=1))
    assert decide(message(ws, ada, kind="transactional", topic="newsletter")).action == "send"
    assert decide(message(ws, None, kind="transactional", to="someone@acme.example")).action == "send"
    for reason, expected in [("soft_bounces", "send"), ("manual", "block"), ("complaint", "block"),
                             ("hard_bounce", "block"), ("invalid", "block"), ("erased", "block")]:
        address = f"{reason}@acme.example"
        services.suppression_add(workspace_id=ws.workspace.pk, email=address, reason=reason)
        assert decide(message(ws, None, kind="transactional", to=address)).action == expected, reason


def test_test_sends_stop_only_for_addresses_that_cannot_receive(ws):
    for reason, expected in [("complaint", "send"), ("manual", "send"), ("soft_bounces", "send"),
                             ("erased", "send"), ("hard_bounce", "block"), ("invalid", "block")]:
        address = f"{reason}@acme.example"
        services.suppression_add(workspace_id=ws.workspace.pk, email=address, reason=reason)
        assert decide(message(ws, None, kind="test", to=address)).action == expected, reason


# --- cost ---------------------------------------------------------------------------------------------

def _queries(messages, now) -> int:
    with CaptureQueriesContext(connection) as ctx:
        gate_check_many(messages=messages, now=now)
    return len(ctx.captured_queries)


def test_a_batch_is_decided_with_a_fixed_number_of_queries(ws, other_ws):
    rules(ws, cap_per_day=3, cap_per_week=10, quiet_start=dt.time(22), quiet_end=dt.time(7))
    topic(ws, "newsletter")
    topic(ws, "offers", mode="opt_in")
    people = [person(ws, f"p{n}@acme.example", timezone="Europe/Lisbon") for n in range(60)]
    for n, p in enumerate(people):
        consent(p, "marketing", "granted", T0 - dt.timedelta(days=n % 5))
        sent(ws, p, T0 - dt.timedelta(hours=n % 30))
        if n % 7 == 0:
            MarketingPause.objects.create(workspace=ws.workspace, contact=p, until=T0 + dt.timedelta(days=1))
    theirs = person(other_ws, "x@other.example")
    batch = [message(ws, p, topic=("newsletter", "offers", "")[n % 3]) for n, p in enumerate(people)]
    batch += [message(ws, people[0], kind="transactional"), message(other_ws, theirs)]
    one = _queries(batch[:1], T0)
    many = _queries(batch, T0)
    assert one <= 7 and many == one, (one, many)
    # The one-message form agrees with the batch form.
    decisions = gate_check_many(messages=batch, now=T0)
    assert {d.action for d in decisions} == {"send", "defer", "block"}
    for msg, decision in zip(batch, decisions):
        assert gate_check(message=msg, now=T0) == decision


# --- sendable_contacts ------------------------------------------------------------------------------

def test_sendable_contacts_is_one_query_and_matches_the_gate(ws, other_ws):
    rules(ws, cap_per_day=1, quiet_start=dt.time(0), quiet_end=dt.time(23, 59))  # ignored by the count
    topic(ws, "newsletter", double_opt_in_countries=["de"])
    topic(ws, "offers", mode="opt_in")
    topic(ws, "events", double_opt_in=True)
    topic(ws, "old", archived_at=T0)
    everyone = {
        "plain": person(ws, "plain@acme.example"),
        "upper": person(ws, "UPPER@acme.example"),
        "german": person(ws, "de@acme.example", country="DE"),
        "german_ok": person(ws, "de2@acme.example", country="de"),
        "quit": person(ws, "quit@acme.example"),
        "paused": person(ws, "paused@acme.example"),
        "offers_yes": person(ws, "offers@acme.example"),
        "no_email": person(ws, ""),
        "came_back": person(ws, "back@acme.example"),
    }
    person(other_ws, "plain@acme.example")
    services.suppression_add(workspace_id=ws.workspace.pk, email="upper@acme.example", reason="hard_bounce")
    consent(everyone["german_ok"], "newsletter", "granted", T0)
    consent(everyone["quit"], "marketing", "withdrawn", T0)
    consent(everyone["came_back"], "marketing", "withdrawn", T0 - dt.timedelta(days=2))
    consent(everyone["came_back"], "marketing", "granted", T0 - dt.timedelta(days=1))
    consent(everyone["offers_yes"], "offers", "granted", T0)
    consent(everyone["offers_yes"], "events", "granted", T0)
    MarketingPause.objects.create(workspace=ws.workspace, contact=everyone["paused"], until=T0 + dt.timedelta(days=1))
    for slug in ("", "newsletter", "offers", "events", "old", "nope"):
        with CaptureQueriesContext(connection) as ctx:
            found = set(sendable_contacts(workspace_id=ws.workspace.pk, topic=slug, now=T0).values_list("pk", flat=True))
        assert len(ctx.captured_queries) <= 2
        expected = {c.pk for c in everyone.values() if c.email
                    and gate_check(message=message(ws, c, topic=slug), now=T0).action != "block"
                    and not (c.pk == everyone["paused"].pk)}
        assert found == expected, slug
    assert {c.email for c in sendable_contacts(workspace_id=ws.workspace.pk, topic="offers", now=T0)} == {
        "offers@acme.example"}


def test_frozen_clock_drives_nothing_in_the_gate_itself(ws):
    # The gate reads only the `now` it is given: the injected clock elsewhere does not leak in.
    ada = person(ws, "ada@acme.example")
    MarketingPause.objects.create(workspace=ws.workspace, contact=ada, until=T0 + dt.timedelta(hours=1))
    with clock_module.use(clock_module.FrozenClock(T0 + dt.timedelta(days=30))):
        assert decide(message(ws, ada), T0).action == "defer"
