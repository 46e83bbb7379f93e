"""The journeys API: apply, versions, publish with the linter, pause/resume/archive, errors that name
the bad part, figures per node from a real run (events through the pipeline, the clock, the real
dispatcher and SMTP server), the people at a node, enrolling by hand, export, a contact's history,
dry runs; another workspace's journeys are invisible."""

from __future__ import annotations

import pytest

from leadflow.journeys.models import Enrollment, Journey, JourneyVersion
from leadflow.messaging import dispatch
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import Message
from leadflow.messaging.sending import messaging_settings_update, sending_server_create

from journey_helpers import apply, contact_of, identify, send, template, tick, track
from smtp_sink import dispatching_to_sink

pytestmark = pytest.mark.django_db

BASE = "/api/journeys"


def call(client, keys, method: str, path: str, body=None):
    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is None and method == "post":
        body = {}
    if body is not None:
        return getattr(client, method)(path, body, content_type="application/json", **kwargs)
    return getattr(client, method)(path, **kwargs)


def simple(**extra) -> dict:
    return {"name": "Welcome", "slug": "welcome", "triggers": [{"event": "Signed Up"}],
            "nodes": [{"id": "wait-1d", "type": "wait", "days": 1, "next": "hello"},
                      {"id": "hello", "type": "send_email", "template": "hello"}], **extra}


def people(ws, n: int, **traits) -> None:
    send(ws, *[identify(f"u{i}", email=f"u{i}@example.com", **traits) for i in range(n)])


# --- figures from a real run ----------------------------------------------------------------------

RUN = {
    "name": "Trial nurture", "slug": "trial", "triggers": [{"event": "Signed Up"}], "reentry": "once",
    "goals": [{"name": "Bought", "event": "Order Completed"}],
    "nodes": [
        {"id": "control", "type": "holdout", "percent": 25, "days": 30, "next": "plan"},
        {"id": "plan", "type": "branch", "if": {"field": "traits.plan", "op": "eq", "value": "pro"},
         "yes": "pro-mail", "no": "wait-1d"},
        {"id": "pro-mail", "type": "send_email", "template": "pro", "next": "wait-1d"},
        {"id": "wait-1d", "type": "wait", "days": 1, "next": "thanks"},
        {"id": "thanks", "type": "send_email", "template": "thanks", "next": "wait-2d"},
        {"id": "wait-2d", "type": "wait", "days": 2, "next": "bye"},
        {"id": "bye", "type": "exit", "reason": "done"},
    ],
}


def test_figures_per_node_come_from_a_real_run(client, ws, frozen_clock):
    template(ws, "pro")
    template(ws, "thanks")
    journey = apply(ws, RUN)
    send(ws, *[identify(f"u{i}", email=f"u{i}@example.com", plan="pro" if i % 2 == 0 else "free")
               for i in range(40)])
    with dispatching_to_sink() as sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="news@acme.test",
                                  postal_address="1 Main St, Springfield")
        sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                              rate_per_second=0)
        send(ws, *[track(f"u{i}", "Signed Up") for i in range(40)])
        held = set(Enrollment.objects.filter(journey=journey, group="holdout")
                   .values_list("contact__user_id", flat=True))
        treated = {f"u{i}" for i in range(40)} - held
        pro = {u for u in treated if int(u[1:]) % 2 == 0}
        assert 0 < len(held) < 20 and pro
        dispatch.dispatch_run()
        assert len(sink.messages) == len(pro), "the pro email went to the treated pro people only"
        pro_mails = list(Message.objects.filter(source=f"journey:{journey.pk}:pro-mail").order_by("pk"))
        for message in pro_mails[:3]:
            message_event_record(message=message, kind="clicked", url="https://acme.example/blog")
        message_event_record(message=pro_mails[0], kind="unsubscribed")

        tick(frozen_clock, days=1)
        dispatch.dispatch_run()
        buyers = {f"u{i}" for i in range(10)}
        send(ws, *[track(u, "Order Completed") for u in sorted(buyers)])
        tick(frozen_clock, days=2)

    stats = call(client, ws, "get", f"{BASE}/{journey.pk}/stats").json()
    nodes = {n["id"]: n for n in stats["nodes"]}
    assert [n["id"] for n in stats["nodes"]] == [n["id"] for n in RUN["nodes"]]
    treated_buyers, held_buyers = len(buyers & treated), len(buyers & held)
    assert nodes["control"]["entered"] == 40
    assert nodes["control"]["passed"] == len(treated)
    assert nodes["control"]["outcomes"] == {"treated": len(treated), "holdout": len(held)}
    assert nodes["control"]["waiting"] == len(held) - held_buyers
    assert nodes["control"]["converted"] == held_buyers, "a held-out buyer is credited where they wait"
    assert nodes["plan"]["outcomes"] == {"yes": len(pro), "no": len(treated) - len(pro)}
    assert nodes["pro-mail"]["passed"] == len(pro)
    email = nodes["pro-mail"]["email"]
    assert (email["queued"], email["sent"], email["delivered"]) == (len(pro), len(pro), len(pro))
    assert (email["clicked"], email["opened"], email["unsubscribed"], email["bounced"]) == (3, 3, 1, 0)
    assert email["click_rate"] == pytest.approx(3 / len(pro))
    assert nodes["thanks"]["email"]["sent"] == len(treated)
    assert nodes["thanks"]["converted"] == treated_buyers, "conversions go to the last node passed"
    assert nodes["wait-2d"]["passed"] == len(treated) - treated_buyers
    assert nodes["bye"]["exited"] == len(treated) - treated_buyers
    assert nodes["wait-1d"]["email"] is None
    assert stats["numbers"] == {"active": len(held) - held_buyers, "entered": 40, "completed": 0,
                                "converted": len(buyers), "exited": len(treated) - treated_buyers, "failed": 0,
                                "conversion_rate": len(buyers) / 40, "emails_sent": len(pro) + len(treated)}
    lift = stats["lift"]
    assert (lift["treated"], lift["treated_converted"]) == (len(treated), treated_buyers)
    assert (lift["holdout"], lift["holdout_converted"]) == (len(held), held_buyers)
    assert lift["lift"] == pytest.approx(treated_buyers / len(treated) - held_buyers / len(held))

    listed = call(client, ws, "get", BASE).json()["items"]
    assert listed[0]["numbers"] == stats["numbers"] and listed[0]["status"] == "live"

    people_at = call(client, ws, "get", f"{BASE}/{journey.pk}/enrollments?node=thanks&state=converted").json()
    assert {p["user_id"] for p in people_at["items"]} == buyers & treated
    waiting = call(client, ws, "get", f"{BASE}/{journey.pk}/enrollments?node=control").json()
    assert {p["user_id"] for p in waiting["items"]} == held - buyers
    assert all(p["group"] == "holdout" and p["state"] == "active" for p in waiting["items"])


def test_figures_of_one_version_count_only_its_people(client, ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, simple())
    people(ws, 3)
    send(ws, track("u0", "Signed Up"), track("u1", "Signed Up"))
    apply(ws, simple(nodes=[{"id": "wait-1d", "type": "wait", "days": 2, "next": "hello"},
                            {"id": "hello", "type": "send_email", "template": "hello"}]))
    send(ws, track("u2", "Signed Up"))
    tick(frozen_clock)
    everyone = call(client, ws, "get", f"{BASE}/{journey.pk}/stats").json()
    assert everyone["version"] == 2 and everyone["only_version"] is False
    assert {n["id"]: n["waiting"] for n in everyone["nodes"]} == {"wait-1d": 3, "hello": 0}
    first = call(client, ws, "get", f"{BASE}/{journey.pk}/stats?version=1").json()
    assert first["version"] == 1 and first["numbers"]["entered"] == 2
    assert {n["id"]: n["waiting"] for n in first["nodes"]} == {"wait-1d": 2, "hello": 0}
    assert call(client, ws, "get", f"{BASE}/{journey.pk}/stats?version=9").status_code == 404


# --- writing journeys -----------------------------------------------------------------------------

def test_apply_makes_a_draft_then_versions_publish_and_people_move(client, ws, frozen_clock):
    template(ws, "hello")
    resp = call(client, ws, "post", BASE, {"definition": simple()})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    jid = body["id"]
    assert (body["status"], body["version"], body["latest_version"]) == ("draft", None, 1)
    assert body["definition"]["nodes"][0] == {"id": "wait-1d", "type": "wait", "days": 1.0, "next": "hello"}
    assert [v["number"] for v in body["versions"]] == [1] and body["versions"][0]["published"] is False

    again = call(client, ws, "post", BASE, {"definition": simple()})
    assert again.status_code == 200 and again.json()["latest_version"] == 1, "the same definition adds nothing"

    resp = call(client, ws, "post", f"{BASE}/{jid}/publish", {})
    assert resp.status_code == 200 and resp.json()["status"] == "live" and resp.json()["version"] == 1
    people(ws, 2)
    send(ws, track("u0", "Signed Up"), track("u1", "Signed Up"))
    tick(frozen_clock)

    changed = simple(nodes=[{"id": "wait-2d", "type": "wait", "days": 2, "next": "hello"},
                            {"id": "hello", "type": "send_email", "template": "hello"}])
    resp = call(client, ws, "put", f"{BASE}/{jid}", {"definition": changed, "migrate": {"wait-1d": "wait-2d"}})
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert (body["version"], body["latest_version"], body["definition_version"]) == (1, 2, 1)
    assert body["versions"][0] == {**body["versions"][0], "number": 2, "published": False, "active": 0,
                                   "migrate": {"wait-1d": "wait-2d"}}
    assert body["versions"][1]["active"] == 2

    resp = call(client, ws, "post", f"{BASE}/{jid}/publish", {"version": 2})
    assert resp.status_code == 200 and resp.json()["version"] == 2
    moved = call(client, ws, "get", f"{BASE}/{jid}/enrollments?node=wait-2d").json()["items"]
    assert sorted(p["user_id"] for p in moved) == ["u0", "u1"] and {p["version"] for p in moved} == {2}

    versions = call(client, ws, "get", f"{BASE}/{jid}/versions").json()
    assert [v["number"] for v in versions] == [2, 1]
    assert versions[0]["definition"]["nodes"][0]["id"] == "wait-2d" and versions[0]["published"]
    exported = call(client, ws, "get", f"{BASE}/{jid}/export?version=1").json()
    assert exported["slug"] == "welcome" and exported["nodes"][0]["id"] == "wait-1d"
    assert call(client, ws, "get", f"{BASE}/{jid}/export").json()["nodes"][0]["id"] == "wait-2d"


def test_apply_and_publish_at_once(client, ws):
    template(ws, "hello")
    resp = call(client, ws, "post", BASE, {"definition": simple(), "publish": True})
    assert resp.status_code == 201 and resp.json()["status"] == "live" and resp.json()["version"] == 1


def test_pause_resume_archive(client, ws):
    template(ws, "hello")
    jid = call(client, ws, "post", BASE, {"definition": simple()}).json()["id"]
    resp = call(client, ws, "post", f"{BASE}/{jid}/pause", {"reason": "checking copy"})
    assert resp.status_code == 400 and "publish a version first" in resp.json()["detail"]
    call(client, ws, "post", f"{BASE}/{jid}/publish")
    body = call(client, ws, "post", f"{BASE}/{jid}/pause", {"reason": "checking copy"}).json()
    assert body["status"] == "paused" and body["paused_reason"] == "checking copy" and body["paused_at"]
    body = call(client, ws, "post", f"{BASE}/{jid}/resume").json()
    assert body["status"] == "live" and body["paused_reason"] == ""
    assert call(client, ws, "post", f"{BASE}/{jid}/archive").json()["status"] == "archived"
    assert call(client, ws, "get", f"{BASE}?status=archived").json()["items"][0]["id"] == jid
    assert call(client, ws, "get", f"{BASE}?status=live").json()["items"] == []


# --- errors ---------------------------------------------------------------------------------------

def test_a_bad_definition_answers_400_with_the_path_and_saves_nothing(client, ws):
    bad = simple(nodes=[{"id": "wait-1d", "type": "wait", "days": 1, "next": "nowhere"}])
    resp = call(client, ws, "post", BASE, {"definition": bad})
    assert resp.status_code == 400
    assert resp.json()["path"] == "nodes[0].next" and "there is no node 'nowhere'" in resp.json()["detail"]
    resp = call(client, ws, "post", BASE, {"definition": {**simple(), "reentry": "sometimes"}})
    assert resp.status_code == 400 and resp.json()["path"] == "reentry"
    resp = call(client, ws, "post", f"{BASE}/lint", {"definition": {**simple(), "triggers": []}})
    assert resp.status_code == 400 and resp.json()["path"] == "triggers"
    resp = call(client, ws, "post", BASE, {"definition": "not an object"})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("definition:")
    assert not Journey.objects.exists()


def test_publishing_refuses_lint_errors_with_every_finding(client, ws):
    resp = call(client, ws, "post", BASE, {"definition": simple(), "publish": True})
    assert resp.status_code == 400
    body = resp.json()
    assert body["detail"].startswith("cannot publish: nodes[1].template") and body["path"] == "nodes[1].template"
    assert any(f["code"] == "unknown_template" and f["level"] == "error" for f in body["findings"])
    journey = Journey.objects.get(slug="welcome")
    assert journey.status == "draft" and journey.version is None, "the version is kept as a draft"
    lint = call(client, ws, "get", f"{BASE}/{journey.pk}/lint").json()
    assert lint["errors"] >= 1 and lint["findings"][0]["path"] == "nodes[1].template"
    template(ws, "hello")
    assert call(client, ws, "post", f"{BASE}/lint", {"definition": simple()}).json()["errors"] == 0
    assert call(client, ws, "post", f"{BASE}/{journey.pk}/publish").status_code == 200


def test_update_errors_name_the_part(client, ws, frozen_clock):
    template(ws, "hello")
    jid = call(client, ws, "post", BASE, {"definition": simple(), "publish": True}).json()["id"]
    resp = call(client, ws, "put", f"{BASE}/{jid}", {"definition": {**simple(), "slug": "other"}})
    assert resp.status_code == 400 and resp.json()["path"] == "slug"
    resp = call(client, ws, "put", f"{BASE}/{jid}", {"definition": simple(), "migrate": {"wait-1d": "gone"}})
    assert resp.status_code == 400 and resp.json()["path"] == "migrate.wait-1d"
    assert "no node 'gone'" in resp.json()["detail"]
    resp = call(client, ws, "put", f"{BASE}/{jid}", {"definition": simple(), "migrate": {"wait-1d": "hello"}})
    assert resp.status_code == 400 and "same type" in resp.json()["detail"]
    resp = call(client, ws, "put", f"{BASE}/{jid}",
                {"definition": {**simple(), "nodes": [{"id": "a", "type": "wait", "minutes": -1}]}})
    assert resp.status_code == 400 and resp.json()["path"].startswith("nodes[0]")
    assert JourneyVersion.objects.filter(journey_id=jid).count() == 1
    resp = call(client, ws, "get", f"{BASE}/{jid}/enrollments?state=waiting")
    assert resp.status_code == 400 and "state:" in resp.json()["detail"]
    resp = call(client, ws, "get", f"{BASE}/{jid}/enrollments?node=hello&state=bogus")
    assert resp.status_code == 400 and "at a node" in resp.json()["detail"]


def test_only_a_secret_key_of_the_workspace_sees_its_journeys(client, ws, other_ws):
    template(ws, "hello")
    jid = call(client, ws, "post", BASE, {"definition": simple()}).json()["id"]
    assert client.get(BASE).status_code == 401
    assert client.get(BASE, HTTP_AUTHORIZATION=f"Bearer {ws.write_key}").status_code == 401
    assert call(client, other_ws, "get", BASE).json()["items"] == []
    for method, path in (("get", f"{BASE}/{jid}"), ("get", f"{BASE}/{jid}/stats"), ("post", f"{BASE}/{jid}/pause"),
                         ("get", f"{BASE}/{jid}/enrollments"), ("get", f"{BASE}/{jid}/export")):
        assert call(client, other_ws, method, path).status_code == 404
    people(ws, 1)
    contact = contact_of(ws, "u0")
    assert call(client, other_ws, "get", f"{BASE}/contacts/{contact.pk}").status_code == 404


# --- people -------------------------------------------------------------------------------------------

def test_enroll_and_remove_by_id_email_and_user_id(client, ws, frozen_clock):
    template(ws, "hello")
    jid = call(client, ws, "post", BASE, {"definition": simple(entry={"field": "traits.plan", "op": "eq",
                                                                      "value": "pro"}),
                                          "publish": True}).json()["id"]
    send(ws, identify("u0", email="u0@example.com", plan="pro"), identify("u1", email="u1@example.com", plan="pro"),
         identify("u2", email="u2@example.com", plan="free"))
    u0 = contact_of(ws, "u0")
    resp = call(client, ws, "post", f"{BASE}/{jid}/enrollments",
                {"contact_ids": [u0.pk], "emails": ["U1@example.com", "nobody@example.com"], "user_ids": ["u2"]})
    body = resp.json()
    assert body["entered"] == 2 and body["contact_ids"] == sorted([u0.pk, contact_of(ws, "u1").pk])
    assert body["not_entered"] == [contact_of(ws, "u2").pk], "the entry filter applies"
    assert [u["value"] for u in body["unknown"]] == ["nobody@example.com"]
    body = call(client, ws, "post", f"{BASE}/{jid}/enrollments", {"user_ids": ["u2"], "check_entry": False}).json()
    assert body["entered"] == 1
    page1 = call(client, ws, "get", f"{BASE}/{jid}/enrollments?limit=2").json()
    page2 = call(client, ws, "get", f"{BASE}/{jid}/enrollments?limit=2&next={page1['next']}").json()
    listed = [p["user_id"] for p in page1["items"] + page2["items"]]
    assert len(page1["items"]) == 2 and page2["next"] is None
    assert listed[0] == "u2" and sorted(listed) == ["u0", "u1", "u2"], "newest first, each once"
    body = call(client, ws, "delete", f"{BASE}/{jid}/enrollments", {"user_ids": ["u1", "ghost"]}).json()
    assert body["removed"] == 1 and body["unknown"][0]["value"] == "ghost"
    states = {p["user_id"]: p["state"] for p in call(client, ws, "get", f"{BASE}/{jid}/enrollments").json()["items"]}
    assert states == {"u0": "active", "u1": "exited", "u2": "active"}
    exited = call(client, ws, "get", f"{BASE}/{jid}/enrollments?state=exited").json()["items"]
    assert len(exited) == 1 and exited[0]["end_reason"].startswith("removed by key:")


def test_enrolling_into_a_journey_that_is_not_live_is_refused(client, ws):
    template(ws, "hello")
    jid = call(client, ws, "post", BASE, {"definition": simple()}).json()["id"]
    people(ws, 1)
    resp = call(client, ws, "post", f"{BASE}/{jid}/enrollments", {"user_ids": ["u0"]})
    assert resp.status_code == 400 and "only a live journey takes people in" in resp.json()["detail"]


def test_a_contacts_journeys_with_their_history(client, ws, frozen_clock):
    template(ws, "hello")
    journey = apply(ws, simple())
    people(ws, 1)
    send(ws, track("u0", "Signed Up"))
    tick(frozen_clock, days=1)
    contact = contact_of(ws, "u0")
    rows = call(client, ws, "get", f"{BASE}/contacts/{contact.pk}").json()
    assert len(rows) == 1
    row = rows[0]
    assert (row["journey"], row["journey_id"], row["state"], row["version"]) == ("welcome", journey.pk, "completed", 1)
    assert [(s["node"], s["kind"]) for s in row["steps"]] == [
        ("wait-1d", "entered"), ("wait-1d", "passed"), ("hello", "sent"), ("hello", "completed")]
    assert row["steps"][2]["detail"]["template"] == "hello"


def test_simulate_shows_the_path_and_keeps_nothing(client, ws, frozen_clock):
    template(ws, "hello", subject="Hello {{ contact.first_name }}")
    journey = apply(ws, simple())
    resp = call(client, ws, "post", f"{BASE}/{journey.pk}/simulate",
                {"traits": {"first_name": "Ann"}, "events": [{"at": "1h", "event": "Signed Up"}], "days": 5})
    assert resp.status_code == 200, resp.content
    timeline = resp.json()
    sent = [s for s in timeline if s["kind"] == "sent"]
    assert len(sent) == 1 and sent[0]["email"]["subject"] == "Hello Ann"
    assert sent[0]["at"].startswith("2026-03-03T10:00")
    assert not Enrollment.objects.exists() and not Message.objects.exists()
    resp = call(client, ws, "post", f"{BASE}/simulate",
                {"definition": {**simple(), "nodes": [{"id": "x", "type": "wait", "days": 0}]}})
    assert resp.status_code == 400 and resp.json()["path"] == "nodes[0]"


# --- the read side's cost -------------------------------------------------------------------------

def test_reads_cost_the_same_few_queries_however_many_journeys_nodes_or_people(ws, frozen_clock):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from leadflow.journeys import selectors

    template(ws, "hello")
    people(ws, 6)

    def journeys(n: int, offset: int = 0) -> None:
        for i in range(offset, offset + n):
            nodes = [{"id": f"w{k}", "type": "wait", "days": 1, "next": f"w{k + 1}"} for k in range(i + 1)]
            nodes.append({"id": f"w{i + 1}", "type": "send_email", "template": "hello"})
            apply(ws, {"name": f"J{i}", "slug": f"j{i}", "triggers": [{"event": f"E{i}"}], "nodes": nodes})
            send(ws, *[track(f"u{k}", f"E{i}") for k in range(i + 1)])

    def cost(read) -> int:
        with CaptureQueriesContext(connection) as queries:
            read()
        return len(queries)

    journeys(1)
    first = Journey.objects.get(slug="j0")
    small = (cost(lambda: selectors.journey_list(workspace=ws.workspace)),
             cost(lambda: selectors.journey_node_stats(journey=first)),
             cost(lambda: selectors.contact_journeys(contact=contact_of(ws, "u0"))))
    journeys(4, offset=1)
    last = Journey.objects.get(slug="j4")
    big = (cost(lambda: selectors.journey_list(workspace=ws.workspace)),
           cost(lambda: selectors.journey_node_stats(journey=last)),
           cost(lambda: selectors.contact_journeys(contact=contact_of(ws, "u0"))))
    assert big == small and max(big) <= 8, (small, big)
    listed = {j.slug: j.numbers for j in selectors.journey_list(workspace=ws.workspace)}
    assert [listed[f"j{i}"].active for i in range(5)] == [1, 2, 3, 4, 5]
