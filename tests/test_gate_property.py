"""Property: across random people (timezones, countries), topics (opt-in, opt-out, double opt-in
for everyone or some countries, archived), consent histories, suppressions, pauses, caps, quiet
hours and messages at random clock times (many of them around DST changes), the gate decides
exactly what the independent reference in `gate_reference.py` decides: it never lets through a
message the reference would stop, a message it lets through is allowed at that moment, and a
deferred message's `until` is the first moment after the pause, under both caps and outside
quiet hours. `sendable_contacts` is the set of people a marketing message on a topic is not
blocked for and who are not paused."""

from __future__ import annotations

import datetime as dt
import uuid

from hypothesis import HealthCheck, given, settings, strategies as st

from leadflow.consent.gate import gate_check, gate_check_many, sendable_contacts
from leadflow.consent.models import ConsentRecord, MarketingPause, Suppression, Topic
from leadflow.contacts.models import Contact
from leadflow.messaging.models import Message, MessagingSettings

from conftest import make_workspace
from gate_reference import reference_allowed_at, reference_decide, reference_facts, reference_paused_at

UTC = dt.timezone.utc
SLUGS = ["news", "offers", "events"]
COUNTRIES = ["", "DE", "FR", "US"]
ZONES = ["", "UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe",
         "Pacific/Chatham", "America/St_Johns", "Not/A_Zone"]
# Around DST changes (EU, US, Lord Howe's half hour, Chatham) and a plain day.
BASES = [dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC), dt.datetime(2026, 10, 24, 22, 0, tzinfo=UTC),
         dt.datetime(2026, 3, 8, 4, 0, tzinfo=UTC), dt.datetime(2026, 4, 4, 13, 0, tzinfo=UTC),
         dt.datetime(2026, 9, 26, 12, 0, tzinfo=UTC), dt.datetime(2026, 6, 10, 20, 0, tzinfo=UTC),
         dt.datetime(2026, 3, 29, 0, 30, tzinfo=UTC), dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]
REASONS = ["hard_bounce", "soft_bounces", "complaint", "manual", "invalid", "erased"]

times = st.sampled_from([dt.time(22, 0), dt.time(7, 0), dt.time(21, 0), dt.time(8, 0), None, dt.time(0, 0),
                         dt.time(2, 30), dt.time(6, 0), dt.time(12, 0), dt.time(20, 45), dt.time(23, 30)])
workspace_rules = st.fixed_dictionaries({
    "quiet_start": times, "quiet_end": times,
    "default_timezone": st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Bad/Zone"]),
    "cap_per_day": st.sampled_from([None, 0, 1, 2, 3]), "cap_per_week": st.sampled_from([None, 2, 4, 7]),
})
topic_st = st.fixed_dictionaries({
    "mode": st.sampled_from(["opt_in", "opt_out"]), "double_opt_in": st.sampled_from([False, False, False, True]),
    "double_opt_in_countries": st.lists(st.sampled_from(["DE", "FR", "US", "de"]), max_size=2, unique=True),
    "archived": st.sampled_from([False, False, False, True]),
})
person_st = st.fixed_dictionaries({"country": st.sampled_from(COUNTRIES), "timezone": st.sampled_from(ZONES),
                                   "email": st.sampled_from(["", "x", "x", "x", "X-UPPER"])})
scenario = st.fixed_dictionaries({
    "rules": st.one_of(st.none(), workspace_rules, workspace_rules, workspace_rules),
    "topics": st.fixed_dictionaries({slug: st.one_of(st.none(), topic_st, topic_st, topic_st) for slug in SLUGS}),
    "people": st.lists(person_st, min_size=1, max_size=4),
    "consents": st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["marketing"] + SLUGS),
                                   st.sampled_from(["granted", "granted", "withdrawn"]), st.integers(0, 60 * 24 * 20)),
                         max_size=10),
    "suppressions": st.lists(st.tuples(st.integers(0, 3), st.sampled_from(REASONS), st.booleans()), max_size=3),
    "pauses": st.lists(st.tuples(st.integers(0, 3), st.integers(-72, 24 * 30)), max_size=3),
    "sends": st.lists(st.tuples(st.integers(0, 3), st.integers(0, 60 * 24 * 8), st.booleans()), max_size=12),
    "messages": st.lists(st.tuples(st.sampled_from([0, 1, 2, 3] * 3 + [None]),
                                   st.sampled_from(["marketing"] * 8 + ["transactional", "test"]),
                                   st.sampled_from(["", "marketing", "ghost"] + SLUGS * 3)),
                         min_size=1, max_size=6),
    "base": st.sampled_from(BASES),
    "offset": st.integers(0, 60 * 48),
    "seconds": st.sampled_from([0, 0, 17]),
})


def _build(sc: dict):
    keys = make_workspace(f"gate {uuid.uuid4().hex[:12]}")
    ws = keys.workspace
    now = sc["base"] + dt.timedelta(minutes=sc["offset"], seconds=sc["seconds"])
    if sc["rules"] is not None:
        MessagingSettings.objects.create(workspace=ws, **sc["rules"])
    for slug, t in sc["topics"].items():
        if t is None:
            continue
        Topic.objects.create(workspace=ws, slug=slug, name=slug, mode=t["mode"], double_opt_in=t["double_opt_in"],
                             double_opt_in_countries=t["double_opt_in_countries"],
                             archived_at=now - dt.timedelta(days=1) if t["archived"] else None)
    people = []
    for n, p in enumerate(sc["people"]):
        email = "" if p["email"] == "" else (f"P{n}@Example.COM" if p["email"] == "X-UPPER" else f"p{n}@example.com")
        people.append(Contact.objects.create(workspace=ws, email=email, country=p["country"], timezone=p["timezone"]))

    def who(index):
        return people[index % len(people)]

    for index, slug, status, minutes in sc["consents"]:
        ConsentRecord.objects.create(workspace=ws, contact=who(index), topic=slug, status=status, source="test",
                                     at=now - dt.timedelta(minutes=minutes))
    for index, reason, lifted in sc["suppressions"]:
        address = who(index).email.lower() or "nobody@example.com"
        if not Suppression.objects.filter(workspace=ws, email=address, lifted_at__isnull=True).exists():
            Suppression.objects.create(workspace=ws, email=address, reason=reason,
                                       lifted_at=now - dt.timedelta(hours=1) if lifted else None)
    for index, hours in sc["pauses"]:
        MarketingPause.objects.create(workspace=ws, contact=who(index), until=now + dt.timedelta(hours=hours))
    for index, minutes, marketing in sc["sends"]:
        contact = who(index)
        Message.objects.create(workspace=ws, contact=contact, to_email=contact.email or "x@example.com",
                               kind="marketing" if marketing else "transactional", status="sent",
                               sent_at=now - dt.timedelta(minutes=minutes))
    messages = []
    for index, kind, topic in sc["messages"]:
        contact = who(index) if index is not None else None
        messages.append(Message.objects.create(
            workspace=ws, contact=contact, kind=kind, topic=topic,
            to_email=(contact.email if contact is not None and contact.email else "someone@example.com")))
    return ws, people, messages, now


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(sc=scenario)
def test_the_gate_decides_what_the_reference_decides(db, sc):
    ws, people, messages, now = _build(sc)
    decisions = gate_check_many(messages=messages, now=now)
    let_through: dict[int, list[dt.datetime]] = {}
    for message, decision in zip(messages, decisions):
        extra = let_through.get(message.contact_id, []) if message.kind == "marketing" else []
        facts = reference_facts(message, now, extra_sent=extra)
        expected = reference_decide(facts, now)
        assert decision.action == expected, (message.kind, message.topic, decision, facts)
        if decision.action == "send":
            assert reference_allowed_at(facts, now)
            if message.kind == "marketing" and message.contact_id:
                let_through.setdefault(message.contact_id, []).append(now)
        elif decision.action == "defer":
            assert decision.until is not None and decision.until > now
            assert reference_allowed_at(facts, decision.until), (decision, facts)
            earlier = max(now, decision.until - dt.timedelta(seconds=1))
            assert not reference_allowed_at(facts, earlier), ("not the first allowed moment", decision, facts)
            assert decision.reason
        else:
            assert decision.reason and decision.until is None
    # The one-message form agrees with the batch form for the first message.
    assert gate_check(message=messages[0], now=now) == decisions[0]
    # sendable_contacts: not blocked for a marketing message on the topic, not paused, has an address.
    for slug in ["", "ghost"] + SLUGS:
        found = set(sendable_contacts(workspace_id=ws.pk, topic=slug, now=now).values_list("pk", flat=True))
        expected = set()
        for contact in people:
            if not contact.email:
                continue
            probe = Message(workspace_id=ws.pk, contact_id=contact.pk, kind="marketing", topic=slug,
                            to_email=contact.email)
            facts = reference_facts(probe, now)
            if reference_decide(facts, now) != "block" and not reference_paused_at(facts, now):
                expected.add(contact.pk)
        assert found == expected, slug



# Deferrals in depth: nobody blocked, only pauses, caps, quiet hours and time zones vary.
deferral = st.fixed_dictionaries({
    "rules": workspace_rules,
    "zones": st.lists(st.sampled_from(ZONES), min_size=1, max_size=3),
    "pauses": st.lists(st.tuples(st.integers(0, 2), st.integers(-5 * 60, 60 * 24 * 3)), max_size=2),
    "sends": st.lists(st.tuples(st.integers(0, 2), st.integers(0, 60 * 24 * 8)), max_size=10),
    "messages": st.lists(st.integers(0, 2), min_size=1, max_size=5),
    "base": st.sampled_from(BASES),
    "offset": st.integers(0, 60 * 48),
    "seconds": st.sampled_from([0, 0, 31]),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(sc=deferral)
def test_a_deferral_is_the_first_moment_pause_caps_and_quiet_hours_allow(db, sc):
    keys = make_workspace(f"defer {uuid.uuid4().hex[:12]}")
    ws = keys.workspace
    now = sc["base"] + dt.timedelta(minutes=sc["offset"], seconds=sc["seconds"])
    MessagingSettings.objects.create(workspace=ws, **sc["rules"])
    people = [Contact.objects.create(workspace=ws, email=f"p{n}@example.com", timezone=zone)
              for n, zone in enumerate(sc["zones"])]
    for index, minutes in sc["pauses"]:
        MarketingPause.objects.create(workspace=ws, contact=people[index % len(people)],
                                      until=now + dt.timedelta(minutes=minutes))
    for index, minutes in sc["sends"]:
        contact = people[index % len(people)]
        Message.objects.create(workspace=ws, contact=contact, to_email=contact.email, status="sent",
                               sent_at=now - dt.timedelta(minutes=minutes))
    messages = [Message.objects.create(workspace=ws, contact=people[i % len(people)], kind="marketing",
                                       to_email=people[i % len(people)].email) for i in sc["messages"]]
    let_through: dict[int, list[dt.datetime]] = {}
    for message, decision in zip(messages, gate_check_many(messages=messages, now=now)):
        facts = reference_facts(message, now, extra_sent=let_through.get(message.contact_id, []))
        assert decision.action == reference_decide(facts, now) != "block"
        if decision.action == "send":
            let_through.setdefault(message.contact_id, []).append(now)
            continue
        assert decision.until > now and reference_allowed_at(facts, decision.until), (decision, facts)
        assert not reference_allowed_at(facts, max(now, decision.until - dt.timedelta(seconds=1))), (decision, facts)
