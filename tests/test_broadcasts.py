"""Broadcasts through the injected clock: counts before sending, scheduling, the start (pinned
versions, one message per recipient, the A/B split), the decision at decide_at sending the winner
to the rest exactly once per person, pause, resume, cancel, crashes mid-queueing, and refusals."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from leadflow.consent.models import ConsentRecord, Suppression
from leadflow.contacts.models import Contact
from leadflow.core.models import AuditEntry
from leadflow.core.pipeline import timers_run
from leadflow.core.services import ServiceError
from leadflow.messaging import abtest, broadcasts, outbox
from leadflow.messaging.broadcasts import HELD
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import Broadcast, Message, Template, TemplateVersion
from leadflow.segments import services as segment_services

pytestmark = pytest.mark.django_db

BODY = ('<p>Hi {{ contact.first_name | default("there") }}</p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</p>')


# --- helpers other broadcast test files import ---------------------------------------------------

def make_template(ws, slug: str, *, subject: str = "Spring sale", topic: str = "", approved: bool = True,
                  kind: str = "marketing") -> Template:
    """A template with version 1 (approved unless told otherwise), written directly: these tests
    are about broadcasts, not about the approval workflow."""
    template = Template.objects.create(workspace=ws.workspace, name=slug.replace("-", " ").title(), slug=slug,
                                       topic=topic, kind=kind)
    version = TemplateVersion.objects.create(workspace=ws.workspace, template=template, number=1, subject=subject,
                                             html=BODY, status="approved" if approved else "draft")
    if approved:
        template.approved_version = version
        template.save(update_fields=["approved_version"])
    return template


def approve_new_version(template: Template, *, subject: str) -> TemplateVersion:
    number = template.versions.count() + 1
    version = TemplateVersion.objects.create(workspace_id=template.workspace_id, template=template, number=number,
                                             subject=subject, html=BODY, status="approved")
    TemplateVersion.objects.filter(pk=template.approved_version_id).update(status="superseded")
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    return version


def people(ws, n: int, *, prefix: str = "p") -> list[Contact]:
    Contact.objects.bulk_create([Contact(workspace=ws.workspace, email=f"{prefix}{i}@example.com",
                                         first_name=f"P{i}") for i in range(n)])
    return list(Contact.objects.filter(workspace=ws.workspace, email__startswith=prefix).order_by("pk"))


def static_list(ws, contacts: list[Contact], name: str = "Audience"):
    segment = segment_services.segment_create(workspace=ws.workspace, name=name, kind="static", actor="test")
    if contacts:
        segment_services.segment_members_add(segment=segment, actor="test", contact_ids=[c.pk for c in contacts])
    return segment


def create(ws, template, segment, **kwargs) -> Broadcast:
    return broadcasts.broadcast_create(workspace=ws.workspace, name=kwargs.pop("name", "March news"),
                                       template=template, segment=segment, actor="test", **kwargs)


def tick(now: dt.datetime) -> None:
    broadcasts.broadcasts_tick(now=now)


def deliver_due(broadcast: Broadcast, now: dt.datetime) -> int:
    """Stand-in for the dispatcher in these clock-driven tests (no SMTP server needed): every due
    message of the broadcast is accepted. It picks what the dispatcher's contract claims: queued or
    deferred, `not_before <= now`, broadcast not paused or cancelled. The real dispatcher and a
    loopback SMTP server run the same story in test_broadcasts_dispatch.py."""
    broadcast.refresh_from_db()
    if broadcast.status in ("paused", "cancelled"):
        return 0
    return (Message.objects.filter(broadcast=broadcast, status__in=["queued", "deferred"], not_before__lte=now)
            .update(status="sent", sent_at=now))


def click(messages) -> None:
    for message in messages:
        message_event_record(message=message, kind="clicked", url="https://acme.example/offer")


def refresh(broadcast: Broadcast) -> Broadcast:
    broadcast.refresh_from_db()
    return broadcast


# --- the whole A/B broadcast through the clock ---------------------------------------------------

def test_a_scheduled_ab_broadcast_runs_by_the_clock_and_sends_the_winner_once_to_the_rest(ws, frozen_clock):
    crowd = people(ws, 1000)
    no_address = Contact.objects.create(workspace=ws.workspace, user_id="anon-1")
    duplicate = Contact.objects.create(workspace=ws.workspace, email="P0@Example.com ")
    segment = static_list(ws, crowd + [no_address, duplicate])
    sale = make_template(ws, "spring-sale", subject="Spring sale")
    last = make_template(ws, "last-chance", subject="Last chance")
    Suppression.objects.create(workspace=ws.workspace, email="p1@example.com", reason="hard_bounce")
    ConsentRecord.objects.create(workspace=ws.workspace, contact=crowd[2], topic="marketing", status="withdrawn",
                                 source="test")
    b = create(ws, sale, segment, variants=[last], test_share=0.4, decide_after_hours=4)
    assert b.status == "draft" and [v.label for v in b.variants.order_by("label")] == ["A", "B"]

    # Before sending: who it would go to, and who consent lets it reach.
    counts = broadcasts.broadcast_counts(broadcast=b, now=frozen_clock.current)
    assert counts["recipients"] == 1000, "one per address: the address-less and the duplicate address do not count"
    assert counts["consent_filtered"] == 998 and counts["not_allowed"] == 2
    assert counts["audience"] is None

    start = frozen_clock.current + dt.timedelta(hours=1)
    broadcasts.broadcast_schedule(broadcast=b, at=start, actor="test")
    assert refresh(b).status == "scheduled"

    tick(start - dt.timedelta(seconds=1))
    assert refresh(b).status == "scheduled" and not Message.objects.filter(broadcast=b).exists()

    frozen_clock.set(start)
    tick(start)
    b = refresh(b)
    assert b.status == "testing" and b.started_at == start and b.decide_at == start + dt.timedelta(hours=4)
    assert b.version == sale.approved_version and b.audience_count == 1000
    messages = Message.objects.filter(broadcast=b)
    assert messages.count() == 1000
    assert messages.filter(to_email="p1@example.com").exists(), "the gate decides at dispatch, not the queue"
    variants = {v.label: v for v in b.variants.all()}
    a_msgs = messages.filter(variant=variants["A"])
    b_msgs = messages.filter(variant=variants["B"])
    held = messages.filter(variant__isnull=True)
    assert (a_msgs.count(), b_msgs.count(), held.count()) == (200, 200, 600), "40% test share, split evenly"
    assert set(a_msgs.values_list("version", flat=True)) == {sale.approved_version_id}
    assert set(b_msgs.values_list("version", flat=True)) == {last.approved_version_id}
    assert set(b_msgs.values_list("template", flat=True)) == {last.pk}
    assert set(held.values_list("not_before", flat=True)) == {HELD}
    assert set(a_msgs.values_list("not_before", flat=True)) == {start}
    assert all(key.startswith(f"broadcast:{b.pk}:") for key in messages.values_list("dedupe_key", flat=True))
    assert set(messages.values_list("source", "campaign").distinct()) == {(f"broadcast:{b.slug}", b.slug)}
    # The split is the seeded one: the same audience always splits the same way.
    plan = dict(abtest.ab_split(seed=b.pk, contact_ids=[c.pk for c in crowd], share=0.4, variants=2))
    assert {m.contact_id: (0 if m.variant_id == variants["A"].pk else 1 if m.variant_id else None)
            for m in messages} == plan

    # Ticking again changes nothing (idempotent).
    tick(start + dt.timedelta(seconds=15))
    assert Message.objects.filter(broadcast=b).count() == 1000

    assert deliver_due(b, start) == 400, "held messages are never due before the decision"
    click(list(b_msgs.order_by("pk")[:40]))
    click(list(a_msgs.order_by("pk")[:10]))
    for message in a_msgs.order_by("-pk")[:100]:  # a link scanner clicks everything in A: kept, not counted
        message_event_record(message=message, kind="clicked", machine=True, url="https://acme.example/offer")

    decide_at = b.decide_at
    tick(decide_at - dt.timedelta(seconds=1))
    assert refresh(b).status == "testing" and b.winner is None
    frozen_clock.set(decide_at)
    tick(decide_at)
    b = refresh(b)
    assert b.status == "sending" and b.winner == variants["B"]
    result = b.result
    assert result["decision"] == "significant" and result["significant"] is True
    assert result["test"] == "two-proportion z-test" and result["p_value"] < 0.05
    assert [(v["label"], v["delivered"], v["successes"]) for v in result["variants"]] == [("A", 200, 10),
                                                                                         ("B", 200, 40)]
    assert result["released"] == 600 and result["decided_by"] == "system"
    rest = Message.objects.filter(broadcast=b, variant__isnull=True)
    assert set(rest.values_list("version", "template", "not_before").distinct()) == {
        (last.approved_version_id, last.pk, decide_at)}

    # Exactly once per contact overall: nobody has two messages, nobody gets two variants.
    per_contact = Counter(Message.objects.filter(broadcast=b).values_list("contact_id", flat=True))
    assert len(per_contact) == 1000 and set(per_contact.values()) == {1}

    tick(decide_at + dt.timedelta(seconds=15))
    assert refresh(b).status == "sending", "600 still to go"
    assert deliver_due(b, decide_at) == 600
    tick(decide_at + dt.timedelta(seconds=30))
    b = refresh(b)
    assert b.status == "done" and b.finished_at == decide_at + dt.timedelta(seconds=30)
    stats = broadcasts.broadcast_stats(broadcast=b)
    assert stats["total"]["sent"] == 1000 and stats["total"]["clicked"] == 50
    groups = {g["label"]: g for g in stats["groups"]}
    assert set(groups) == {"A", "B", "rest"} and groups["B"]["click_rate"] == 0.2 and groups["A"]["click_rate"] == 0.05
    assert {e.action for e in AuditEntry.objects.filter(target=f"broadcast:{b.pk}")} >= {
        "broadcast.create", "broadcast.schedule", "broadcast.start", "broadcast.winner"}


def test_a_plain_broadcast_sent_now_queues_everyone_with_the_pinned_version(ws, frozen_clock):
    crowd = people(ws, 30)
    news = make_template(ws, "news")
    b = create(ws, news, static_list(ws, crowd))
    b = broadcasts.broadcast_send_now(broadcast=b, actor="test")
    assert b.status == "sending" and b.version == news.approved_version and b.audience_count == 30
    assert b.decide_at is None
    first = news.approved_version_id
    # Approving a new version while sending does not change what is in flight.
    approve_new_version(news, subject="News, edited")
    assert set(Message.objects.filter(broadcast=b).values_list("version", flat=True)) == {first}
    assert set(Message.objects.filter(broadcast=b).values_list("not_before", "variant").distinct()) == {
        (frozen_clock.current, None)}
    deliver_due(b, frozen_clock.current)
    tick(frozen_clock.current)
    assert refresh(b).status == "done"


def test_membership_is_taken_when_sending_starts(ws, frozen_clock):
    crowd = people(ws, 12)
    segment = static_list(ws, crowd[:10])
    b = create(ws, make_template(ws, "news"), segment)
    assert broadcasts.broadcast_counts(broadcast=b, now=frozen_clock.current)["recipients"] == 10
    segment_services.segment_members_add(segment=segment, actor="test", contact_ids=[crowd[10].pk])
    assert broadcasts.broadcast_counts(broadcast=b, now=frozen_clock.current)["recipients"] == 11, \
        "before the start the count follows the segment"
    broadcasts.broadcast_send_now(broadcast=b, actor="test")
    segment_services.segment_members_add(segment=segment, actor="test", contact_ids=[crowd[11].pk])
    for seconds in (15, 30):
        tick(frozen_clock.current + dt.timedelta(seconds=seconds))
    assert set(Message.objects.filter(broadcast=b).values_list("contact_id", flat=True)) == {
        c.pk for c in crowd[:11]}
    assert refresh(b).audience_count == 11


def test_deferred_and_in_flight_messages_keep_a_broadcast_open(ws, frozen_clock):
    crowd = people(ws, 3)
    b = broadcasts.broadcast_send_now(broadcast=create(ws, make_template(ws, "news"), static_list(ws, crowd)),
                                      actor="test")
    first, second, third = Message.objects.filter(broadcast=b).order_by("pk")
    Message.objects.filter(pk=first.pk).update(status="sent", sent_at=frozen_clock.current)
    Message.objects.filter(pk=second.pk).update(status="deferred", not_before=frozen_clock.current + dt.timedelta(hours=9))
    Message.objects.filter(pk=third.pk).update(status="sending")
    tick(frozen_clock.current)
    assert refresh(b).status == "sending"
    Message.objects.filter(pk=second.pk).update(status="blocked")
    tick(frozen_clock.current)
    assert refresh(b).status == "sending", "one is still being sent"
    Message.objects.filter(pk=third.pk).update(status="review")
    tick(frozen_clock.current)
    assert refresh(b).status == "done"


# --- A/B decisions ------------------------------------------------------------------------------------

def _ab(ws, frozen_clock, n: int, *, variants: int = 2, share: float = 0.5, metric: str = "click_rate"):
    crowd = people(ws, n)
    main = make_template(ws, "offer-a", subject="Offer A")
    others = [make_template(ws, f"offer-{x}", subject=f"Offer {x.upper()}") for x in "bcd"[:variants - 1]]
    b = create(ws, main, static_list(ws, crowd), variants=others, test_share=share, winner_metric=metric)
    b = broadcasts.broadcast_send_now(broadcast=b, actor="test")
    deliver_due(b, frozen_clock.current)
    by_label = {v.label: Message.objects.filter(broadcast=b, variant=v).order_by("pk") for v in b.variants.all()}
    return b, by_label


def test_no_significant_difference_still_sends_the_best_and_records_the_p_value(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 200)
    click(groups["A"][:11])
    click(groups["B"][:12])
    frozen_clock.advance(hours=4)
    tick(frozen_clock.current)
    b = refresh(b)
    assert b.winner.label == "B", "the best by the metric is sent even without significance"
    assert b.result["decision"] == "not significant" and b.result["significant"] is False
    assert 0.05 <= b.result["p_value"] <= 1 and "not significant" in b.result["note"]
    assert b.result["best_by_metric"] == "B" and b.status == "sending"


def test_equal_results_send_variant_a(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 100)
    frozen_clock.advance(hours=4)
    tick(frozen_clock.current)
    b = refresh(b)
    assert b.winner.label == "A" and b.result["decision"] == "not enough data" and b.result["p_value"] is None


def test_three_variants_use_a_chi_square_test(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 900, variants=3, share=0.6)
    assert [groups[x].count() for x in "ABC"] == [180, 180, 180]
    click(groups["A"][:10])
    click(groups["B"][:12])
    click(groups["C"][:45])
    frozen_clock.advance(hours=4)
    tick(frozen_clock.current)
    b = refresh(b)
    assert b.winner.label == "C" and b.result["test"] == "chi-square test" and b.result["p_value"] < 0.001


def test_unsubscribe_rate_lower_wins(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 400, metric="unsubscribe_rate")
    for message in groups["A"][:30]:
        message_event_record(message=message, kind="unsubscribed")
    for message in groups["B"][:2]:
        message_event_record(message=message, kind="unsubscribed")
    frozen_clock.advance(hours=4)
    tick(frozen_clock.current)
    b = refresh(b)
    assert b.winner.label == "B" and b.result["significant"] is True and b.result["metric"] == "unsubscribe_rate"


def test_pick_winner_by_hand_or_by_the_results_so_far(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 100)
    click(groups["A"][:5])
    with pytest.raises(ServiceError, match="one of A, B"):
        broadcasts.broadcast_pick_winner(broadcast=b, actor="user:1", label="D")
    b = broadcasts.broadcast_pick_winner(broadcast=b, actor="user:1", label="B")
    assert b.winner.label == "B" and b.result["decision"] == "picked by hand" and b.result["best_by_metric"] == "A"
    assert b.result["decided_by"] == "user:1"
    assert set(Message.objects.filter(broadcast=b, variant__isnull=True).values_list("template__slug", flat=True)) == {
        "offer-b"}
    with pytest.raises(ServiceError, match="sending"):
        broadcasts.broadcast_pick_winner(broadcast=b, actor="user:1")
    frozen_clock.advance(hours=5)
    tick(frozen_clock.current)
    assert refresh(b).winner.label == "B", "the tick does not decide again"


def test_pick_winner_now_decides_by_the_data(ws, frozen_clock):
    b, groups = _ab(ws, frozen_clock, 400)
    click(groups["A"][:40])
    b = broadcasts.broadcast_pick_winner(broadcast=b, actor="user:1")
    assert b.winner.label == "A" and b.result["decision"] == "significant" and b.result["manual"] is False


# --- pause, resume, cancel ------------------------------------------------------------------------

def test_pause_holds_queueing_and_the_decision_until_resumed(ws, frozen_clock, monkeypatch):
    monkeypatch.setattr(broadcasts, "QUEUE_PER_PASS", 10)
    crowd = people(ws, 25)
    b = create(ws, make_template(ws, "offer-a"), static_list(ws, crowd), variants=[make_template(ws, "offer-b")],
               test_share=0.4)
    b = broadcasts.broadcast_send_now(broadcast=b, actor="test")
    assert Message.objects.filter(broadcast=b).count() == 10 and b.audience_count is None
    assert Message.objects.filter(broadcast=b, variant__isnull=False).count() == 10, "the test group goes first"
    b = broadcasts.broadcast_pause(broadcast=b, actor="test")
    assert b.status == "paused"
    assert deliver_due(b, frozen_clock.current) == 0, "a paused broadcast's messages are not due"
    for hours in (1, 5):
        tick(frozen_clock.current + dt.timedelta(hours=hours))
    b = refresh(b)
    assert Message.objects.filter(broadcast=b).count() == 10, "nothing new is queued while paused"
    assert b.winner is None and b.status == "paused", "nor decided"
    with pytest.raises(ServiceError, match="paused"):
        broadcasts.broadcast_pause(broadcast=b, actor="test")
    b = broadcasts.broadcast_resume(broadcast=b, actor="test")
    assert b.status == "testing"
    now = frozen_clock.advance(hours=5)
    tick(now)
    b = refresh(b)
    assert Message.objects.filter(broadcast=b).count() == 20 and b.winner is None, "queueing resumes first"
    tick(now + dt.timedelta(seconds=15))
    b = refresh(b)
    assert Message.objects.filter(broadcast=b).count() == 25 and b.audience_count == 25
    tick(now + dt.timedelta(seconds=30))
    assert refresh(b).winner is not None and b.status == "sending"


def test_cancel_stops_the_rest_and_keeps_what_was_sent(ws, frozen_clock):
    crowd = people(ws, 40)
    b = create(ws, make_template(ws, "offer-a"), static_list(ws, crowd), variants=[make_template(ws, "offer-b")],
               test_share=0.5)
    b = broadcasts.broadcast_send_now(broadcast=b, actor="test")
    sent = deliver_due(b, frozen_clock.current)
    assert sent == 20
    one = Message.objects.filter(broadcast=b, status="sent").first()
    Message.objects.filter(pk=one.pk).update(status="deferred", not_before=frozen_clock.current + dt.timedelta(hours=1))
    b = broadcasts.broadcast_cancel(broadcast=b, actor="test")
    assert b.status == "cancelled" and b.finished_at == frozen_clock.current
    statuses = Counter(Message.objects.filter(broadcast=b).values_list("status", flat=True))
    assert statuses == {"sent": 19, "cancelled": 21}, "held and deferred are cancelled, sent stay sent"
    assert set(Message.objects.filter(broadcast=b, status="cancelled").values_list("error", flat=True)) == {
        "the broadcast was cancelled"}
    tick(frozen_clock.advance(hours=5))
    b = refresh(b)
    assert b.status == "cancelled" and b.winner is None
    assert Message.objects.filter(broadcast=b, status="cancelled").count() == 21
    for action in (broadcasts.broadcast_cancel, broadcasts.broadcast_resume, broadcasts.broadcast_pause):
        with pytest.raises(ServiceError):
            action(broadcast=b, actor="test")


def test_a_scheduled_broadcast_can_be_cancelled_before_it_starts(ws, frozen_clock):
    b = create(ws, make_template(ws, "news"), static_list(ws, people(ws, 5)))
    broadcasts.broadcast_schedule(broadcast=b, at=frozen_clock.current + dt.timedelta(hours=2), actor="test")
    broadcasts.broadcast_cancel(broadcast=b, actor="test")
    tick(frozen_clock.advance(hours=3))
    assert refresh(b).status == "cancelled" and not Message.objects.filter(broadcast=b).exists()


# --- queueing is idempotent and survives crashes --------------------------------------------------

def test_a_crash_mid_queueing_leaves_nothing_half_written_and_a_retry_queues_everyone_once(ws, frozen_clock,
                                                                                            monkeypatch):
    monkeypatch.setattr(broadcasts, "CHUNK", 10)
    crowd = people(ws, 35)
    b = create(ws, make_template(ws, "news"), static_list(ws, crowd))
    real = outbox.messages_queue_bulk
    calls = []

    def dies_on_the_third_batch(**kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("worker killed")
        return real(**kwargs)

    monkeypatch.setattr(outbox, "messages_queue_bulk", dies_on_the_third_batch)
    with pytest.raises(RuntimeError):
        broadcasts.broadcast_send_now(broadcast=b, actor="test")
    assert refresh(b).status == "draft" and not Message.objects.filter(broadcast=b).exists()
    monkeypatch.setattr(outbox, "messages_queue_bulk", real)
    broadcasts.broadcast_send_now(broadcast=b, actor="test")
    assert Message.objects.filter(broadcast=b).count() == 35


def test_an_interrupted_queueing_pass_is_finished_by_the_tick_with_the_same_split(ws, frozen_clock, monkeypatch):
    crowd = people(ws, 50)
    b = create(ws, make_template(ws, "offer-a"), static_list(ws, crowd), variants=[make_template(ws, "offer-b")],
               test_share=0.4)
    monkeypatch.setattr(broadcasts, "QUEUE_PER_PASS", 7)
    b = broadcasts.broadcast_send_now(broadcast=b, actor="test")  # the first pass "dies" after 7
    assert Message.objects.filter(broadcast=b).count() == 7
    monkeypatch.setattr(broadcasts, "QUEUE_PER_PASS", 20_000)
    tick(frozen_clock.current)
    b = refresh(b)
    assert b.audience_count == 50
    variants = {v.pk: v.label for v in b.variants.all()}
    got = {m.contact_id: variants.get(m.variant_id) for m in Message.objects.filter(broadcast=b)}
    plan = dict(abtest.ab_split(seed=b.pk, contact_ids=[c.pk for c in crowd], share=0.4, variants=2))
    assert got == {cid: "AB"[i] if i is not None else None for cid, i in plan.items()}
    # Running the pass again queues nothing twice.
    with_lock = Broadcast.objects.get(pk=b.pk)
    assert broadcasts._queue_pass(with_lock, now=frozen_clock.current) == 0
    assert Message.objects.filter(broadcast=b).count() == 50


def test_timers_run_drives_the_tick(ws, frozen_clock):
    b = create(ws, make_template(ws, "news"), static_list(ws, people(ws, 4)))
    broadcasts.broadcast_schedule(broadcast=b, at=frozen_clock.current + dt.timedelta(minutes=1), actor="test")
    frozen_clock.advance(minutes=1)
    assert "messaging.broadcasts" in timers_run(force=True)
    assert refresh(b).status == "sending" and Message.objects.filter(broadcast=b).count() == 4


# --- refusals -------------------------------------------------------------------------------------

def test_starting_needs_an_approved_version(ws, frozen_clock):
    draft_only = make_template(ws, "draft-only", approved=False)
    b = create(ws, draft_only, static_list(ws, people(ws, 3)))
    with pytest.raises(ServiceError, match="no approved version"):
        broadcasts.broadcast_send_now(broadcast=b, actor="test")
    with pytest.raises(ServiceError, match="no approved version"):
        broadcasts.broadcast_schedule(broadcast=b, at=frozen_clock.current + dt.timedelta(hours=1), actor="test")
    assert refresh(b).status == "draft" and not Message.objects.filter(broadcast=b).exists()


def test_a_scheduled_broadcast_that_can_no_longer_start_goes_back_to_draft_with_the_reason(ws, frozen_clock):
    news = make_template(ws, "news")
    other = create(ws, make_template(ws, "other"), static_list(ws, people(ws, 2, prefix="o"), name="Others"),
                   name="Other")
    b = create(ws, news, static_list(ws, people(ws, 3)))
    for x in (b, other):
        broadcasts.broadcast_schedule(broadcast=x, at=frozen_clock.current + dt.timedelta(hours=1), actor="test")
    Template.objects.filter(pk=news.pk).update(approved_version=None)  # approval withdrawn
    tick(frozen_clock.advance(hours=1))
    b = refresh(b)
    assert b.status == "draft" and "no approved version" in b.result["error"]
    assert refresh(other).status == "sending", "one broadcast that cannot start does not hold up the others"
    assert AuditEntry.objects.filter(action="broadcast.start_failed", target=f"broadcast:{b.pk}").exists()


@pytest.mark.parametrize("kwargs, error", [
    ({"test_share": 0}, "between 0 and 1"),
    ({"test_share": 1.5}, "between 0 and 1"),
    ({"test_share": float("nan")}, "must be a number"),
    ({"winner_metric": "opens"}, "click_rate, open_rate, unsubscribe_rate"),
    ({"decide_after_hours": 0}, "more than 0"),
    ({"decide_after_hours": 10_000}, "at most 336"),
    ({"name": "  "}, "needs a name"),
])
def test_bad_settings_are_refused_and_store_nothing(ws, kwargs, error):
    news = make_template(ws, "news")
    with pytest.raises(ServiceError, match=error):
        create(ws, news, static_list(ws, []), **kwargs)
    assert not Broadcast.objects.exists()


def test_variants_must_be_marketing_templates_of_the_same_workspace_and_topic(ws, other_ws):
    news = make_template(ws, "news", topic="newsletter")
    segment = static_list(ws, [])
    same_topic = [make_template(ws, f"news-{x}", topic="newsletter") for x in "bcd"]
    with pytest.raises(ServiceError, match="at most 4"):
        create(ws, news, segment, variants=same_topic + [make_template(ws, "news-e", topic="newsletter")])
    with pytest.raises(ServiceError, match="same subscribers"):
        create(ws, news, segment, variants=[make_template(ws, "offers", topic="offers")])
    with pytest.raises(ServiceError, match="already a variant"):
        create(ws, news, segment, variants=[news])
    with pytest.raises(ServiceError, match="transactional"):
        create(ws, news, segment, variants=[make_template(ws, "receipt", topic="newsletter", kind="transactional")])
    foreign = make_template(other_ws, "news", topic="newsletter")
    with pytest.raises(ServiceError, match="no such template"):
        create(ws, news, segment, variants=[foreign])
    with pytest.raises(ServiceError, match="no such template"):
        create(ws, foreign, segment)
    with pytest.raises(ServiceError, match="no such segment"):
        create(ws, news, static_list(other_ws, [], name="Theirs"))
    b = create(ws, news, segment, variants=same_topic)
    assert [v.label for v in b.variants.order_by("label")] == ["A", "B", "C", "D"]


def test_only_drafts_and_scheduled_broadcasts_can_be_edited(ws, frozen_clock):
    news = make_template(ws, "news")
    b = create(ws, news, static_list(ws, people(ws, 3)), scheduled_at=frozen_clock.current + dt.timedelta(days=1))
    assert b.status == "draft", "a planned time is not a confirmation"
    offers = make_template(ws, "news-b")
    b = broadcasts.broadcast_update(broadcast=b, actor="test", name="March news (final)", variants=[offers],
                                    test_share=0.3, decide_after_hours=2.5)
    assert b.name == "March news (final)" and b.slug == "march-news" and b.test_share == 0.3
    assert b.result["decide_after_hours"] == 2.5 and b.variants.count() == 2
    broadcasts.broadcast_schedule(broadcast=b, at=b.scheduled_at, actor="test")
    b = broadcasts.broadcast_update(broadcast=b, actor="test", scheduled_at=None)
    assert b.status == "draft" and b.scheduled_at is None, "clearing the time unschedules"
    b = broadcasts.broadcast_update(broadcast=b, actor="test", variants=[])
    assert b.variants.count() == 0
    broadcasts.broadcast_send_now(broadcast=b, actor="test")
    with pytest.raises(ServiceError, match="only drafts and scheduled"):
        broadcasts.broadcast_update(broadcast=b, actor="test", name="Too late")
    with pytest.raises(ServiceError, match="only a draft or scheduled"):
        broadcasts.broadcast_send_now(broadcast=b, actor="test")
    assert Message.objects.filter(broadcast=b).count() == 3


def test_scheduling_in_the_past_is_refused(ws, frozen_clock):
    b = create(ws, make_template(ws, "news"), static_list(ws, []))
    with pytest.raises(ServiceError, match="in the past"):
        broadcasts.broadcast_schedule(broadcast=b, at=frozen_clock.current - dt.timedelta(hours=1), actor="test")
    assert refresh(b).status == "draft"


def test_a_version_superseded_while_a_big_audience_is_still_queueing_finishes_on_the_pinned_version(
        ws, frozen_clock, monkeypatch):
    """Approving a newer version while a broadcast is still queueing its passes changes nothing for
    it: every recipient gets the version it pinned when it started (sends in flight keep theirs)."""
    monkeypatch.setattr(broadcasts, "QUEUE_PER_PASS", 5)
    news = make_template(ws, "news")
    b = broadcasts.broadcast_send_now(broadcast=create(ws, news, static_list(ws, people(ws, 12))), actor="test")
    pinned = b.version_id
    approve_new_version(news, subject="News v2")
    for _ in range(3):
        tick(frozen_clock.current)
    b = refresh(b)
    assert not b.result.get("error")
    assert Message.objects.filter(broadcast=b).count() == 12
    assert set(Message.objects.filter(broadcast=b).values_list("version", flat=True)) == {pinned}


def test_the_outbox_never_queues_a_version_that_was_never_approved(ws):
    from leadflow.messaging.outbox import messages_queue_bulk

    news = make_template(ws, "news")
    draft = TemplateVersion.objects.create(workspace=ws.workspace, template=news, number=2, subject="Draft",
                                           html=BODY, status="draft")
    with pytest.raises(ServiceError, match="not approved"):
        messages_queue_bulk(workspace_id=ws.workspace.pk, contacts=people(ws, 2), template=news, version=draft,
                            source="test", dedupe_prefix="t:")
    assert not Message.objects.exists()
