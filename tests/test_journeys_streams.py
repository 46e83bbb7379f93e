"""Stay-in-touch streams and the accelerator pace, driven by the clock through the real pipeline:
the next piece a person has not had, every two weeks on Tuesday 10:00 in their time zone, from
the pool of their stage and for their role; exhausted until content is added; slower for weak
engagement, faster (or on to sales) for strong intent; and the emails arriving over SMTP."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from django.db.models import Min

from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError
from leadflow.journeys import streams
from leadflow.journeys.engine import journeys_advance, journeys_run_due
from leadflow.journeys.models import Enrollment, EnrollmentStep, Stream, StreamItem
from leadflow.lifecycle.services import contact_stage_set
from leadflow.messaging.models import Message

from journey_helpers import apply, contact_of, identify, page, send, template, track

pytestmark = pytest.mark.django_db

NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc
CADENCE = {"every_days": 14, "weekday": "tue", "time": "10:00"}


def at(*args, zone=UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=zone).astimezone(UTC)


def make_stream(ws, slug: str, items: list) -> Stream:
    """A stream from (template slug, role) pairs, creating the templates."""
    for name, _ in items:
        if not ws.workspace.email_templates.filter(slug=name).exists():
            template(ws, name)
    stream, _ = streams.stream_apply(workspace=ws.workspace, actor="test", data={
        "slug": slug, "name": slug.title(), "items": [{"template": name, "role": role} for name, role in items]})
    return stream


def stage_streams(ws) -> None:
    make_stream(ws, "early", [("why-plan", ""), ("roi-for-buyers", "buyer"), ("setup-for-doers", "doer"),
                              ("checklist", "")])
    make_stream(ws, "middle", [("case-study", ""), ("pricing-guide", "buyer")])
    make_stream(ws, "late", [("references", "")])


def drip(**extra) -> dict:
    return {"id": "drip", "type": "stream",
            "pools": [{"stream": "early", "stages": ["subscriber", "lead"]},
                      {"stream": "middle", "stages": ["marketing_qualified"]},
                      {"stream": "late"}],
            "cadence": CADENCE, **extra}


def journey(ws, *nodes, slug="stay-in-touch", **extra):
    return apply(ws, {"name": slug.replace("-", " ").title(), "slug": slug, "triggers": [{"event": "Signed Up"}],
                      "nodes": list(nodes), **extra})


def run_until(clock, moment: dt.datetime, each=None) -> None:
    """Step the clock from one due enrollment to the next up to `moment`, running what is due at
    each (as a simulation does, then `each()`), and stop at `moment`."""
    while True:
        journeys_run_due(now=clock.current)
        if each is not None:
            each()
        following = (Enrollment.objects.filter(state="active", journey__status="live")
                     .aggregate(m=Min("due_at"))["m"])
        if following is None or following > moment or following <= clock.current:
            break
        clock.set(following)
    clock.set(moment)
    journeys_run_due(now=moment)


def received(user: str, zone=UTC) -> list[tuple[str, str]]:
    """(template, local day and time it was queued) of each message to `user`, in order."""
    rows = (Message.objects.filter(contact__user_id=user).order_by("queued_at", "pk")
            .values_list("template__slug", "queued_at", "not_before"))
    out = []
    for slug, queued_at, not_before in rows:
        assert not_before == queued_at, "due at once: the slot is the send time"
        out.append((slug, queued_at.astimezone(zone).strftime("%a %m-%d %H:%M")))
    return out


def enrollment(journey_, user: str) -> Enrollment:
    return Enrollment.objects.get(journey=journey_, contact__user_id=user)


def people(ws, *specs) -> None:
    send(ws, *[identify(user, email=f"{user}@example.com", **traits) for user, traits in specs])
    send(ws, *[track(user, "Signed Up") for user, _ in specs])


# --- the stream node ------------------------------------------------------------------------------

def test_a_stage_stream_sends_the_next_unread_piece_for_the_role_every_two_weeks_on_tuesday_local(ws, frozen_clock):
    stage_streams(ws)
    j = journey(ws, drip())
    people(ws, ("ann", {"role": "Buyer", "timezone": "America/New_York"}),
           ("dirk", {"role": "doer", "timezone": "Europe/Berlin"}))
    assert {u: Contact.objects.get(user_id=u).lifecycle_stage for u in ("ann", "dirk")} == {"ann": "lead",
                                                                                          "dirk": "lead"}
    # Monday 09:00 UTC: both wait for their first Tuesday 10:00 local.
    assert enrollment(j, "ann").due_at == at(2026, 3, 3, 10, zone=NEW_YORK) == at(2026, 3, 3, 15)
    assert enrollment(j, "dirk").due_at == at(2026, 3, 3, 9)
    assert Message.objects.count() == 0

    run_until(frozen_clock, at(2026, 3, 20))
    # New York moves to summer time on 8 March: still 10:00 local (14:00 UTC instead of 15:00).
    assert received("ann", NEW_YORK) == [("why-plan", "Tue 03-03 10:00"), ("roi-for-buyers", "Tue 03-17 10:00")]
    assert [m.queued_at for m in Message.objects.filter(contact__user_id="ann").order_by("pk")] == [
        at(2026, 3, 3, 15), at(2026, 3, 17, 14)]
    assert received("dirk", BERLIN) == [("why-plan", "Tue 03-03 10:00"), ("setup-for-doers", "Tue 03-17 10:00")]

    # Ann becomes an MQL: at her next slot she draws from the middle stream.
    contact_stage_set(contact=contact_of(ws, "ann"), to_stage="marketing_qualified", reason="test", actor="test")
    run_until(frozen_clock, at(2026, 4, 22))
    assert received("ann", NEW_YORK)[2:] == [("case-study", "Tue 03-31 10:00"), ("pricing-guide", "Tue 04-14 10:00")]
    assert received("dirk", BERLIN)[2:] == [("checklist", "Tue 03-31 10:00")], "then dirk has had all of early"

    sent = list(Message.objects.values_list("contact__user_id", "template__slug"))
    assert len(sent) == len(set(sent)), "never a piece twice"
    dirk = enrollment(j, "dirk")
    assert dirk.state == "active" and dirk.data["exhausted"] == "early"
    assert dirk.due_at == at(2026, 4, 28, 10, zone=BERLIN), "exhausted people look again at their next slot"
    step = EnrollmentStep.objects.get(enrollment=dirk, kind="waiting")
    assert step.detail == {"exhausted": "early", "stream": "early"} and step.at == at(2026, 4, 14, 10, zone=BERLIN)
    history = list(EnrollmentStep.objects.filter(enrollment=enrollment(j, "ann"), kind="sent")
                   .order_by("at").values_list("detail__stream", "detail__template"))
    assert history == [("early", "why-plan"), ("early", "roi-for-buyers"), ("middle", "case-study"),
                       ("middle", "pricing-guide")]

    # Content added later reaches the exhausted at their next cadence, once.
    template(ws, "new-webinar")
    streams.stream_item_add(stream=Stream.objects.get(slug="early"), template=ws.workspace.email_templates.get(
        slug="new-webinar"), actor="test")
    run_until(frozen_clock, at(2026, 6, 1))
    assert received("dirk", BERLIN)[3:] == [("new-webinar", "Tue 04-28 10:00")]
    assert received("ann", NEW_YORK)[4:] == [], "the addition is to early; ann has had all of middle"
    assert enrollment(j, "ann").data["exhausted"] == "middle"
    assert "exhausted" in enrollment(j, "dirk").data
    assert EnrollmentStep.objects.filter(enrollment=dirk, kind="waiting").count() == 2, \
        "marked once each time they run out, not at every slot"

    report = streams.stream_report(stream=Stream.objects.get(slug="early"))
    assert [(row["item"].template.slug, row["had"]) for row in report["items"]] == [
        ("why-plan", 2), ("roi-for-buyers", 1), ("setup-for-doers", 1), ("checklist", 1), ("new-webinar", 1)]
    assert report["exhausted"] == 1 and report["journeys"] == ["stay-in-touch"]


def test_a_stage_without_a_pool_waits_and_the_fallback_pool_takes_other_stages(ws, frozen_clock):
    stage_streams(ws)
    j = journey(ws, drip(pools=[{"stream": "early", "stages": ["subscriber"]},
                                {"stream": "late", "stages": ["customer"]}]))
    people(ws, ("ann", {}))
    contact_stage_set(contact=contact_of(ws, "ann"), to_stage="opportunity", reason="test", actor="test")
    run_until(frozen_clock, at(2026, 3, 4))
    assert received("ann") == []
    step = EnrollmentStep.objects.get(enrollment=enrollment(j, "ann"), kind="waiting")
    assert step.detail == {"reason": "no stream for this stage", "stage": "opportunity"}
    assert enrollment(j, "ann").due_at == at(2026, 3, 17, 10)

    fallback = journey(ws, drip(), slug="with-fallback")
    send(ws, track("ann", "Signed Up"))
    run_until(frozen_clock, at(2026, 3, 18))
    assert received("ann") == [("references", "Tue 03-10 10:00")], "opportunity falls to the pool without stages"
    assert enrollment(fallback, "ann").due_at == at(2026, 3, 24, 10)


def test_weak_engagement_slows_the_cadence_and_engagement_speeds_it_up_again(ws, frozen_clock):
    make_stream(ws, "news", [(f"piece-{i}", "") for i in range(1, 7)])
    journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE,
                 "slow": {"engagement_below": 10, "every_days": 28}})
    people(ws, ("keen", {}), ("quiet", {}))
    Contact.objects.filter(user_id="keen").update(engagement_score=25)
    run_until(frozen_clock, at(2026, 4, 15))
    assert [when for _, when in received("keen")] == ["Tue 03-03 10:00", "Tue 03-17 10:00", "Tue 03-31 10:00",
                                                      "Tue 04-14 10:00"]
    assert [when for _, when in received("quiet")] == ["Tue 03-03 10:00", "Tue 03-31 10:00"]
    assert list(EnrollmentStep.objects.filter(contact_id=contact_of(ws, "quiet").pk, kind="sent")
                .order_by("at").values_list("detail__every_days", flat=True)) == [28, 28]
    # Quiet starts to engage: after the slot already planned, the pace is the normal one.
    Contact.objects.filter(user_id="quiet").update(engagement_score=12)
    run_until(frozen_clock, at(2026, 6, 1))
    assert [when for _, when in received("quiet")][2:] == ["Tue 04-28 10:00", "Tue 05-12 10:00", "Tue 05-26 10:00"]


def test_strong_intent_takes_people_off_the_slow_drip_to_a_faster_path_without_repeats(ws, frozen_clock):
    make_stream(ws, "news", [(f"piece-{i}", "") for i in range(1, 7)])
    template(ws, "pricing-follow-up")
    j = journey(ws,
                {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE,
                 "until": {"any": [{"visited": "/pricing*", "within_days": 14},
                                   {"field": "engagement_score", "op": "gte", "value": 50}]},
                 "next": "follow-up"},
                {"id": "follow-up", "type": "send_email", "template": "pricing-follow-up", "next": "fast"},
                {"id": "fast", "type": "stream", "pools": [{"stream": "news"}],
                 "cadence": {"every_days": 3, "time": "10:00"}})
    people(ws, ("hot", {}), ("calm", {}))
    run_until(frozen_clock, at(2026, 3, 10))
    send(ws, page("hot", "/pricing"))
    run_until(frozen_clock, at(2026, 3, 24, 12))
    # At her next slot the pricing visit sends her on: the follow-up at once, then the news she has
    # not had every 3 days (10:00 UTC, any weekday) — piece-1 is not sent again.
    assert received("hot") == [("piece-1", "Tue 03-03 10:00"), ("pricing-follow-up", "Tue 03-17 10:00"),
                               ("piece-2", "Wed 03-18 10:00"), ("piece-3", "Sat 03-21 10:00"),
                               ("piece-4", "Tue 03-24 10:00")]
    assert received("calm") == [("piece-1", "Tue 03-03 10:00"), ("piece-2", "Tue 03-17 10:00")]
    assert dict(Enrollment.objects.filter(journey=j).values_list("contact__user_id", "node")) == {
        "hot": "fast", "calm": "drip"}
    assert EnrollmentStep.objects.filter(node="drip", kind="passed", detail__outcome="until").count() == 1


def test_a_piece_is_never_sent_twice_across_journeys_or_a_redone_pass(ws, frozen_clock):
    make_stream(ws, "news", [("piece-1", ""), ("piece-2", ""), ("piece-3", "")])
    first = journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE},
                    slug="first")
    journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}],
                 "cadence": {"every_days": 14, "weekday": "thu", "time": "10:00"}}, slug="second")
    people(ws, ("ann", {}))
    run_until(frozen_clock, at(2026, 3, 6))
    assert received("ann") == [("piece-1", "Tue 03-03 10:00"), ("piece-2", "Thu 03-05 10:00")]
    keys = set(Message.objects.values_list("dedupe_key", flat=True))
    news = Stream.objects.get(slug="news")
    ann = contact_of(ws, "ann").pk
    assert keys == {streams.item_key(news.pk, item.pk, ann) for item in news.items.all()[:2]}

    # A crash before commit redoes the step: the slot comes again, the outbox already has the piece.
    e = enrollment(first, "ann")
    frozen_clock.set(at(2026, 3, 17, 10))
    journeys_run_due(now=frozen_clock.current)
    assert [slug for slug, _ in received("ann")] == ["piece-1", "piece-2", "piece-3"]
    Enrollment.objects.filter(pk=e.pk).update(due_at=frozen_clock.current, data={})
    journeys_advance(now=frozen_clock.current)
    assert Message.objects.count() == 3
    assert enrollment(first, "ann").data == {"exhausted": "news"}


def test_the_same_template_in_two_pools_is_not_sent_again_after_a_stage_change(ws, frozen_clock):
    make_stream(ws, "early", [("intro", ""), ("shared", "")])
    make_stream(ws, "middle", [("shared", ""), ("deep-dive", "")])
    journey(ws, drip(pools=[{"stream": "early", "stages": ["lead"]}, {"stream": "middle"}]))
    people(ws, ("ann", {}))
    run_until(frozen_clock, at(2026, 3, 20))
    assert [slug for slug, _ in received("ann")] == ["intro", "shared"]
    contact_stage_set(contact=contact_of(ws, "ann"), to_stage="marketing_qualified", reason="test", actor="test")
    run_until(frozen_clock, at(2026, 4, 1))
    assert [slug for slug, _ in received("ann")] == ["intro", "shared", "deep-dive"]


def test_the_journey_cap_holds_a_piece_until_it_frees(ws, frozen_clock):
    make_stream(ws, "news", [("piece-1", ""), ("piece-2", "")])
    template(ws, "welcome")
    j = journey(ws, {"id": "hello", "type": "send_email", "template": "welcome", "next": "drip"},
                {"id": "drip", "type": "stream", "pools": [{"stream": "news"}],
                 "cadence": {"every_days": 7, "time": "10:00"}},
                cap={"emails": 1, "days": 3})
    frozen_clock.set(at(2026, 3, 2, 20))
    people(ws, ("ann", {}))
    run_until(frozen_clock, at(2026, 3, 8))
    # Welcome at 20:00 Monday; the 10:00 Tuesday slot is held until Thursday 20:00 by the cap.
    assert received("ann") == [("welcome", "Mon 03-02 20:00"), ("piece-1", "Thu 03-05 20:00")]
    assert EnrollmentStep.objects.filter(enrollment=enrollment(j, "ann"), kind="waiting",
                                         detail__reason="journey cap").count() == 1
    assert enrollment(j, "ann").due_at == at(2026, 3, 12, 10)


def test_a_stream_that_does_not_exist_fails_with_a_clear_reason(ws, frozen_clock):
    make_stream(ws, "nowhere", [("piece-1", "")])
    j = journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "nowhere"}], "cadence": CADENCE})
    Stream.objects.filter(slug="nowhere").delete()  # gone from under the journey
    people(ws, ("ann", {}))
    run_until(frozen_clock, at(2026, 3, 4))
    e = enrollment(j, "ann")
    assert e.state == "failed" and "there is no stream 'nowhere'" in e.end_reason


# --- services ---------------------------------------------------------------------------------

def test_apply_is_idempotent_and_keeps_what_people_had(ws, frozen_clock):
    for slug in ("a", "b", "c"):
        template(ws, slug)
    data = {"slug": "news", "name": "News", "items": [{"template": "a"}, {"template": "b", "role": "Buyer"}]}
    stream, changed = streams.stream_apply(workspace=ws.workspace, data=data, actor="test")
    assert changed and streams.stream_export(stream=stream) == {
        "slug": "news", "name": "News", "items": [{"template": "a"}, {"template": "b", "role": "buyer"}]}
    ids = list(stream.items.values_list("pk", flat=True))
    assert streams.stream_apply(workspace=ws.workspace, data=data, actor="test")[1] is False
    reordered = {"slug": "news", "name": "News", "items": [{"template": "c"}, {"template": "b", "role": "buyer"},
                                                           {"template": "a"}]}
    stream, changed = streams.stream_apply(workspace=ws.workspace, data=reordered, actor="test")
    assert changed
    items = list(stream.items.order_by("position").values_list("template__slug", "pk", "position"))
    assert items == [("c", items[0][1], 1), ("b", ids[1], 2), ("a", ids[0], 3)], "kept items keep their identity"

    bad = [({"slug": "News!", "items": []}, "slug:"),
           ({"slug": "news", "items": [{"template": "zz"}]}, "items[0].template: there is no email template 'zz'"),
           ({"slug": "news", "items": [{"template": "a"}, {"template": "a", "role": ""}]},
            "items[1]: 'a' is listed twice"),
           ({"slug": "news", "items": [{"template": "a", "colour": "red"}]}, "items[0].colour:"),
           ("news", "stream:")]
    for data, words in bad:
        with pytest.raises(ServiceError) as info:
            streams.stream_apply(workspace=ws.workspace, data=data, actor="test")
        assert str(info.value).startswith(words), (data, str(info.value))


def test_items_add_at_a_position_remove_and_reorder(ws):
    for slug in ("a", "b", "c"):
        template(ws, slug)
    stream = streams.stream_create(workspace=ws.workspace, name="Late stage", actor="test")
    assert stream.slug == "late-stage"
    a = streams.stream_item_add(stream=stream, template=ws.workspace.email_templates.get(slug="a"), actor="t")
    c = streams.stream_item_add(stream=stream, template=ws.workspace.email_templates.get(slug="c"), actor="t")
    b = streams.stream_item_add(stream=stream, template=ws.workspace.email_templates.get(slug="b"), actor="t",
                                position=2, role="Doer")

    def order():
        return list(stream.items.order_by("position").values_list("template__slug", "role", "position"))

    assert order() == [("a", "", 1), ("b", "doer", 2), ("c", "", 3)]
    with pytest.raises(ServiceError, match="already in stream"):
        streams.stream_item_add(stream=stream, template=ws.workspace.email_templates.get(slug="b"), role="doer",
                                actor="t")
    streams.stream_items_reorder(stream=stream, item_ids=[c.pk, a.pk, b.pk], actor="t")
    assert order() == [("c", "", 1), ("a", "", 2), ("b", "doer", 3)]
    with pytest.raises(ServiceError, match="exactly once"):
        streams.stream_items_reorder(stream=stream, item_ids=[c.pk, a.pk], actor="t")
    streams.stream_item_remove(item=a, actor="t")
    assert order() == [("c", "", 1), ("b", "doer", 2)]
    with pytest.raises(ServiceError, match="already exists"):
        streams.stream_create(workspace=ws.workspace, name="Other", slug="late-stage", actor="t")


def test_a_stream_in_use_cannot_be_deleted(ws, frozen_clock):
    make_stream(ws, "news", [("piece-1", "")])
    journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE})
    with pytest.raises(ServiceError, match="used by journey 'stay-in-touch'"):
        streams.stream_delete(stream=Stream.objects.get(slug="news"), actor="t")
    unused = make_stream(ws, "unused", [("piece-1", "")])
    streams.stream_delete(stream=unused, actor="t")
    assert not StreamItem.objects.filter(stream_id=unused.pk).exists()


# --- API --------------------------------------------------------------------------------------

BASE = "/api/journey-streams"


def call(client, keys, method: str, path: str, body=None):
    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is not None:
        return getattr(client, method)(path, body, content_type="application/json", **kwargs)
    return getattr(client, method)(path, **kwargs)


def test_the_api_manages_streams_and_reports_had_and_exhausted(client, ws, other_ws, frozen_clock):
    for slug in ("a", "b"):
        template(ws, slug)
    resp = call(client, ws, "post", BASE, {"name": "News"})
    assert resp.status_code == 201, resp.content
    sid = resp.json()["id"]
    assert resp.json()["slug"] == "news" and resp.json()["items"] == []
    resp = call(client, ws, "post", f"{BASE}/{sid}/items", {"template": "a"})
    assert resp.status_code == 201 and [i["template"] for i in resp.json()["items"]] == ["a"]
    resp = call(client, ws, "post", f"{BASE}/{sid}/items", {"template": "nope"})
    assert resp.status_code == 400 and "no email template 'nope'" in resp.json()["detail"]
    resp = call(client, ws, "post", f"{BASE}/{sid}/items", {"template": "a"})
    assert resp.status_code == 400 and "already in stream" in resp.json()["detail"]

    journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE})
    people(ws, ("ann", {}), ("bob", {}))
    run_until(frozen_clock, at(2026, 3, 18))
    body = call(client, ws, "get", f"{BASE}/{sid}").json()
    assert [(i["template"], i["had"]) for i in body["items"]] == [("a", 2)]
    assert body["exhausted"] == 2 and body["journeys"] == ["stay-in-touch"]

    b = ws.workspace.email_templates.get(slug="b")
    resp = call(client, ws, "post", f"{BASE}/{sid}/items", {"template_id": b.pk, "position": 1, "role": "buyer"})
    assert [(i["template"], i["role"], i["position"]) for i in resp.json()["items"]] == [("b", "buyer", 1),
                                                                                       ("a", "", 2)]
    ids = [i["id"] for i in resp.json()["items"]]
    resp = call(client, ws, "put", f"{BASE}/{sid}/items/order", {"item_ids": ids[::-1]})
    assert resp.status_code == 200 and [i["template"] for i in resp.json()["items"]] == ["a", "b"]
    resp = call(client, ws, "delete", f"{BASE}/{sid}/items/{ids[0]}")
    assert [i["template"] for i in resp.json()["items"]] == ["a"]
    assert call(client, ws, "patch", f"{BASE}/{sid}", {"name": "Newsletter"}).json()["name"] == "Newsletter"
    resp = call(client, ws, "delete", f"{BASE}/{sid}")
    assert resp.status_code == 400 and "used by journey" in resp.json()["detail"]

    export = call(client, ws, "get", f"{BASE}/{sid}/export").json()
    assert export == {"slug": "news", "name": "Newsletter", "items": [{"template": "a"}]}
    resp = call(client, ws, "put", f"{BASE}/apply", {**export, "items": [{"template": "a"}, {"template": "b"}]})
    assert resp.status_code == 200 and resp.json()["changed"] is True
    assert call(client, ws, "put", f"{BASE}/apply", {**export, "items": [{"template": "a"}, {"template": "b"}]}
                ).json()["changed"] is False
    resp = call(client, ws, "put", f"{BASE}/apply", {"slug": "news", "items": [{"template": 3}]})
    assert resp.status_code == 400 and resp.json()["detail"].startswith("items[0].template:")

    listed = call(client, ws, "get", BASE).json()
    assert [(s["slug"], s["items"]) for s in listed["items"]] == [("news", 2)]
    assert call(client, other_ws, "get", f"{BASE}/{sid}").status_code == 404
    assert call(client, other_ws, "get", BASE).json()["items"] == []


# --- through the dispatcher ---------------------------------------------------------------------

def test_stream_emails_arrive_over_smtp_on_the_right_local_tuesdays(ws, frozen_clock):
    from leadflow.messaging.dispatch import dispatch_run
    from leadflow.messaging.sending import messaging_settings_update, sending_server_create

    from smtp_sink import dispatching_to_sink

    stage_streams(ws)
    journey(ws, drip())
    arrivals = []
    with dispatching_to_sink() as sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="news@acme.test",
                                  postal_address="1 Main St, Springfield")
        sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                              rate_per_second=0)

        def deliver():
            before = len(sink.messages)
            dispatch_run()
            zones = {"ann@example.com": NEW_YORK, "dirk@example.com": BERLIN}
            arrivals.extend((got.rcpt_tos[0], str(got.message["Subject"]),
                             frozen_clock.current.astimezone(zones[got.rcpt_tos[0]]).strftime("%a %m-%d %H:%M"))
                            for got in sink.messages[before:])

        people(ws, ("ann", {"role": "buyer", "timezone": "America/New_York"}),
               ("dirk", {"role": "doer", "timezone": "Europe/Berlin"}))
        run_until(frozen_clock, at(2026, 3, 20), each=deliver)
        contact_stage_set(contact=contact_of(ws, "ann"), to_stage="marketing_qualified", reason="test", actor="test")
        run_until(frozen_clock, at(2026, 4, 1), each=deliver)
    assert sorted(arrivals) == [
        ("ann@example.com", "Case study", "Tue 03-31 10:00"),
        ("ann@example.com", "Roi for buyers", "Tue 03-17 10:00"),
        ("ann@example.com", "Why plan", "Tue 03-03 10:00"),
        ("dirk@example.com", "Checklist", "Tue 03-31 10:00"),
        ("dirk@example.com", "Setup for doers", "Tue 03-17 10:00"),
        ("dirk@example.com", "Why plan", "Tue 03-03 10:00"),
    ]
    assert set(Message.objects.values_list("status", flat=True)) == {"sent"}


def test_a_slot_reads_the_same_queries_for_three_people_as_for_forty(ws, frozen_clock):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_stream(ws, "news", [("general", ""), ("for-buyers", "buyer"), ("for-doers", "doer")])
    journey(ws, {"id": "drip", "type": "stream", "pools": [{"stream": "news"}], "cadence": CADENCE,
                 "until": {"field": "traits.plan", "op": "eq", "value": "pro"}, "next": "done"},
            {"id": "done", "type": "exit"})

    def slot_queries(users: list[str], slot: dt.datetime) -> int:
        people(ws, *[(u, {"role": ("buyer", "doer", "")[i % 3]}) for i, u in enumerate(users)])
        frozen_clock.set(slot)
        with CaptureQueriesContext(connection) as queries:
            journeys_advance(now=slot)
        assert Message.objects.filter(contact__user_id__in=users).count() == len(users)
        # Reads only: the store may split a large insert into batches (SQLite's variable limit).
        return sum(1 for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT"))

    few = slot_queries([f"a{i}" for i in range(3)], at(2026, 3, 3, 10))
    many = slot_queries([f"b{i}" for i in range(40)], at(2026, 3, 10, 10))
    assert many == few, "one query per group, not per person"
