"""Email statistics (per template, version, broadcast and variant; machine events left out by
default; a click counts as an open), the messages API with its workspace isolation, and the
contact page showing each message's lifecycle."""

from __future__ import annotations

import pytest

from leadflow.core.services import user_create
from leadflow.messaging import stats
from leadflow.messaging.bounces import outcome_apply
from leadflow.messaging.events import message_event_record
from leadflow.messaging.models import Broadcast, BroadcastVariant, MessageEventKind
from leadflow.segments.models import Segment

from test_email_tracking import make_contact, make_template, sent_message

pytestmark = pytest.mark.django_db


def human(message, kind, **kw):
    return message_event_record(message=message, kind=kind, **kw)


def machine(message, kind, **kw):
    return message_event_record(message=message, kind=kind, machine=True, detail={"machine_reason": "test"}, **kw)


@pytest.fixture
def sends(ws, frozen_clock):
    """Two versions of a template, six messages with known outcomes, one test send, one queued."""
    template, (v1, v2) = make_template(ws, "spring", versions=2)
    people = [make_contact(ws, f"p{n}@example.com") for n in range(8)]
    m = [sent_message(ws, people[n], template, version=v1 if n < 3 else v2) for n in range(6)]
    frozen_clock.advance(hours=1)
    human(m[0], MessageEventKind.OPENED)
    human(m[0], MessageEventKind.OPENED)  # twice: still one opened message
    human(m[0], MessageEventKind.CLICKED, url="https://acme.example/a")
    machine(m[1], MessageEventKind.OPENED)  # Apple's proxy only
    machine(m[2], MessageEventKind.OPENED)  # Apple's proxy, then the person clicks
    human(m[2], MessageEventKind.CLICKED, url="https://acme.example/b")
    machine(m[3], MessageEventKind.CLICKED, url="https://acme.example/a")  # a scanner only
    outcome_apply(message=m[4], outcome="hard", status="5.1.1", source_id="x1")
    outcome_apply(message=m[5], outcome="soft", status="4.2.2", source_id="x2")
    human(m[5], MessageEventKind.UNSUBSCRIBED)
    human(m[5], MessageEventKind.COMPLAINED)
    sent_message(ws, people[6], template, version=v2, kind="test")  # test sends never count
    from leadflow.messaging.outbox import message_queue

    message_queue(workspace_id=ws.workspace.pk, contact=people[7], template=template, version=v2)  # not sent yet
    return template, v1, v2, m


def test_template_statistics_count_people_not_machines(ws, sends):
    template, v1, v2, _ = sends
    result = stats.template_stats(template=template)
    total = result["total"]
    assert {k: total[k] for k in stats.COUNTS} == {
        "queued": 7, "sent": 6, "delivered": 5, "hard_bounced": 1, "soft_bounced": 1, "opened": 2, "clicked": 2,
        "unsubscribed": 1, "complained": 1}
    assert total["open_rate"] == 0.4 and total["click_rate"] == 0.4 and total["click_to_open"] == 1.0
    assert total["bounce_rate"] == round(1 / 6, 4) and total["complaint_rate"] == 0.2
    by_version = {row["version"]: row for row in result["versions"]}
    assert [row["version"] for row in result["versions"]] == [2, 1]
    assert (by_version[1]["sent"], by_version[1]["opened"], by_version[1]["clicked"]) == (3, 2, 2)
    assert (by_version[2]["queued"], by_version[2]["sent"], by_version[2]["hard_bounced"]) == (4, 3, 1)
    with_machines = stats.template_stats(template=template, include_machine=True)["total"]
    assert (with_machines["opened"], with_machines["clicked"]) == (4, 3)  # + proxy-only open, + scanner click
    assert stats.messages_stats(workspace_id=ws.workspace.pk, version_id=v1.pk)["opened"] == 2
    with pytest.raises(ValueError):
        stats.messages_stats(workspace_id=ws.workspace.pk, status="sent")


def test_statistics_are_one_query_whatever_the_volume(ws, sends, django_assert_num_queries):
    template, *_ = sends
    with django_assert_num_queries(1):
        stats.messages_stats(workspace_id=ws.workspace.pk, template_id=template.pk, include_machine=True)
    with django_assert_num_queries(2):  # grouped figures + version numbers
        stats.template_stats(template=template)
    for n in range(20):
        sent_message(ws, make_contact(ws, f"more{n}@example.com"), template)
    with django_assert_num_queries(2):
        stats.template_stats(template=template)


def _broadcast(ws, template, versions) -> tuple[Broadcast, list[BroadcastVariant]]:
    segment = Segment.objects.create(workspace=ws.workspace, name="All", slug="all", definition={})
    broadcast = Broadcast.objects.create(workspace=ws.workspace, name="Spring", slug="spring", template=template,
                                         segment=segment)
    variants = [BroadcastVariant.objects.create(workspace=ws.workspace, broadcast=broadcast, label=label, version=v)
                for label, v in zip("AB", versions)]
    return broadcast, variants


def test_broadcast_statistics_per_variant(ws, frozen_clock):
    template, versions = make_template(ws, "ab", versions=2)
    broadcast, (a, b) = _broadcast(ws, template, versions)
    for n in range(4):
        variant = a if n % 2 == 0 else b
        message = sent_message(ws, make_contact(ws, f"ab{n}@example.com"), template, version=variant.version,
                               broadcast_id=broadcast.pk, variant_id=variant.pk)
        if variant is a:
            human(message, MessageEventKind.CLICKED, url="https://acme.example/")
    winner_rest = sent_message(ws, make_contact(ws, "rest@example.com"), template, broadcast_id=broadcast.pk)
    machine(winner_rest, MessageEventKind.CLICKED, url="https://acme.example/")
    result = stats.broadcast_stats(broadcast=broadcast)
    assert [(v["label"], v["sent"], v["clicked"], v["click_rate"]) for v in result["variants"]] == [
        ("A", 2, 2, 1.0), ("B", 2, 0, 0.0)]
    assert result["total"]["sent"] == 5 and result["total"]["clicked"] == 2
    assert result["without_variant"]["sent"] == 1 and result["without_variant"]["clicked"] == 0


# --- the API --------------------------------------------------------------------------------------------

def api(client, keys, path: str):
    return client.get(f"/api/email/messages{path}", HTTP_AUTHORIZATION=keys.bearer)


def test_messages_api_lists_a_contacts_messages_with_their_events(client, ws, sends):
    template, v1, v2, m = sends
    contact_id = m[0].contact_id
    response = api(client, ws, f"/contacts/{contact_id}")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [i["id"] for i in items] == [m[0].pk]
    kinds = [(e["kind"], e["machine"]) for e in items[0]["events"]]
    assert kinds == [("queued", False), ("opened", False), ("opened", False), ("clicked", False)]
    assert items[0]["template"] == "spring" and items[0]["template_version"] == 1
    assert items[0]["events"][-1]["url"] == "https://acme.example/a"
    detail = api(client, ws, f"/{m[4].pk}").json()
    assert detail["status"] == "bounced" and detail["events"][-1]["detail"]["status"] == "5.1.1"
    listing = api(client, ws, f"?template_id={template.pk}&status=sent&limit=2").json()
    assert len(listing["items"]) == 2 and listing["next"]
    rest = api(client, ws, f"?template_id={template.pk}&status=sent&limit=2&next={listing['next']}").json()
    assert {i["id"] for i in listing["items"]}.isdisjoint({i["id"] for i in rest["items"]})
    assert api(client, ws, "?status=exploded").status_code == 400
    assert api(client, ws, "?to_email=P0@EXAMPLE.COM").json()["items"][0]["id"] == m[0].pk


def test_stats_api(client, ws, sends):
    template, *_ = sends
    body = api(client, ws, f"/stats/templates/{template.pk}").json()
    assert body["total"]["opened"] == 2 and body["include_machine"] is False and len(body["versions"]) == 2
    assert api(client, ws, f"/stats/templates/{template.pk}?include_machine=true").json()["total"]["opened"] == 4
    summary = api(client, ws, "/stats/templates").json()
    assert [(row["slug"], row["queued"]) for row in summary] == [("spring", 7)]


def test_messages_api_is_isolated_per_workspace(client, ws, other_ws, sends, frozen_clock):
    template, _, _, m = sends
    segment = Segment.objects.create(workspace=ws.workspace, name="All", slug="all", definition={})
    broadcast = Broadcast.objects.create(workspace=ws.workspace, name="B", slug="b", template=template,
                                         segment=segment)
    for path in (f"/{m[0].pk}", f"/contacts/{m[0].contact_id}", f"/stats/templates/{template.pk}",
                 f"/stats/broadcasts/{broadcast.pk}"):
        assert api(client, ws, path).status_code == 200, path
        assert api(client, other_ws, path).status_code == 404, path
    assert api(client, other_ws, "").json()["items"] == []
    assert api(client, other_ws, f"?contact_id={m[0].contact_id}").json()["items"] == []
    assert api(client, other_ws, "/stats/templates").json() == []
    assert client.get("/api/email/messages").status_code == 401


# --- the contact page ----------------------------------------------------------------------------------------

def test_contact_page_shows_each_messages_lifecycle_and_readable_email_events(client, ws, sends, process):
    _, _, _, m = sends
    user = user_create(username="mk", password="pw-123456789", workspace=ws.workspace, role="marketer")
    client.force_login(user)
    process()
    page = client.get(f"/contacts/{m[2].contact_id}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<h2>Email" in html and "spring</span> v1" in html
    assert "opened (machine)" in html and "clicked" in html
    assert "Email Clicked" in html and "Email Opened (machine)" in html  # the timeline rows
    assert "not scored, not in statistics" in html
    bounced = client.get(f"/contacts/{m[4].contact_id}/").content.decode()
    assert "Bounced" in bounced and "Email Bounced" in bounced and "5.1.1" in bounced
