"""The consent API (/api/email/consent): topics, a person's subscriptions and pause, the suppression
list with cursor pagination, add, lift and CSV import; errors; workspace isolation."""

from __future__ import annotations

import json

import pytest

from leadflow.consent.models import ConsentRecord, OptInRequest, Suppression, Topic
from leadflow.contacts.models import Contact
from leadflow.messaging.models import Message

pytestmark = pytest.mark.django_db

BASE = "/api/email/consent"


def call(client, keys, method: str, path: str, body=None):
    headers = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is None:
        return client.generic(method, BASE + path, **headers)
    return client.generic(method, BASE + path, json.dumps(body), content_type="application/json", **headers)


def test_topics_crud(client, ws):
    created = call(client, ws, "POST", "/topics", {"name": "Newsletter", "description": "Monthly",
                                                    "double_opt_in_countries": ["de"]})
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["slug"], body["mode"], body["double_opt_in_countries"]) == ("newsletter", "opt_out", ["DE"])
    offers = call(client, ws, "POST", "/topics", {"name": "Offers", "mode": "opt_in", "position": 5}).json()
    assert [t["slug"] for t in call(client, ws, "GET", "/topics").json()] == ["newsletter", "offers"]
    patched = call(client, ws, "PATCH", f"/topics/{offers['id']}", {"name": "Special offers", "double_opt_in": True})
    assert patched.status_code == 200 and patched.json()["name"] == "Special offers"
    assert patched.json()["slug"] == "offers" and patched.json()["double_opt_in"] is True
    assert call(client, ws, "DELETE", f"/topics/{offers['id']}").status_code == 204
    assert [t["slug"] for t in call(client, ws, "GET", "/topics").json()] == ["newsletter"]
    assert [t["slug"] for t in call(client, ws, "GET", "/topics?archived=true").json()] == ["offers"]
    restored = call(client, ws, "PATCH", f"/topics/{offers['id']}", {"archived": False})
    assert restored.json()["archived_at"] is None
    assert call(client, ws, "GET", f"/topics/{body['id']}").json()["name"] == "Newsletter"


def test_topic_errors_are_clear(client, ws):
    call(client, ws, "POST", "/topics", {"name": "Newsletter"})
    dup = call(client, ws, "POST", "/topics", {"name": "Newsletter"})
    assert dup.status_code == 400 and "already exists" in dup.json()["detail"]
    reserved = call(client, ws, "POST", "/topics", {"name": "Everything", "slug": "marketing"})
    assert reserved.status_code == 400 and "reserved" in reserved.json()["detail"]
    bad_mode = call(client, ws, "POST", "/topics", {"name": "X", "mode": "sometimes"})
    assert bad_mode.status_code == 422 and "mode" in bad_mode.json()["detail"]
    bad_country = call(client, ws, "POST", "/topics", {"name": "Y", "double_opt_in_countries": ["Germany"]})
    assert bad_country.status_code == 400 and "two-letter" in bad_country.json()["detail"]
    assert call(client, ws, "GET", "/topics/999999").status_code == 404
    opt_out_doi = call(client, ws, "POST", "/topics", {"name": "Webinars", "double_opt_in": True})
    assert opt_out_doi.status_code == 400
    assert "opt-out topic cannot need double opt-in for everyone" in opt_out_doi.json()["detail"]
    newsletter = Topic.objects.get(workspace=ws.workspace, slug="newsletter")
    patched = call(client, ws, "PATCH", f"/topics/{newsletter.pk}", {"double_opt_in": True})
    assert patched.status_code == 400 and "cannot need double opt-in" in patched.json()["detail"]
    by_country = call(client, ws, "PATCH", f"/topics/{newsletter.pk}", {"double_opt_in_countries": ["DE"]})
    assert by_country.status_code == 200 and by_country.json()["mode"] == "opt_out"
    assert by_country.json()["double_opt_in"] is False
    assert Topic.objects.filter(workspace=ws.workspace).count() == 1


def test_a_persons_subscriptions_get_set_and_pause(client, ws, frozen_clock):
    call(client, ws, "POST", "/topics", {"name": "Offers", "mode": "opt_in"})
    call(client, ws, "POST", "/topics", {"name": "Events", "mode": "opt_in", "double_opt_in": True})
    ada = Contact.objects.create(workspace=ws.workspace, email="ada@acme.example")
    state = call(client, ws, "GET", f"/contacts/{ada.pk}/subscriptions").json()
    assert state["marketing"] is True and state["paused_until"] is None
    assert {t["slug"]: (t["subscribed"], t["status"]) for t in state["topics"]} == {
        "offers": (False, "none"), "events": (False, "none")}
    done = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions",
                {"topic": "offers", "granted": True, "wording": "Yes, offers", "ip": "198.51.100.9"})
    assert done.status_code == 200 and done.json()["result"] == "recorded"
    assert done.json()["record"]["wording"] == "Yes, offers"
    record = ConsentRecord.objects.get(contact=ada, topic="offers")
    assert (record.source, record.ip) == ("api", "198.51.100.9")
    again = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions", {"topic": "offers", "granted": True})
    assert again.json()["result"] == "unchanged"
    doi = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions", {"topic": "events", "granted": True}).json()
    assert doi["result"] == "confirmation_sent" and doi["record"] is None
    assert OptInRequest.objects.get(pk=doi["optin_request_id"]).contact_id == ada.pk
    assert {t["slug"]: t["pending_optin"] for t in doi["subscriptions"]["topics"]}["events"] is True
    everything = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions",
                      {"topic": "marketing", "granted": False}).json()
    assert everything["subscriptions"]["marketing"] is False
    assert {t["slug"]: t["receiving"] for t in everything["subscriptions"]["topics"]}["offers"] is False
    unknown = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions", {"topic": "nope", "granted": True})
    assert unknown.status_code == 404
    bad_ip = call(client, ws, "POST", f"/contacts/{ada.pk}/subscriptions",
                  {"topic": "offers", "granted": False, "ip": "not-an-ip"})
    assert bad_ip.status_code == 422
    paused = call(client, ws, "POST", f"/contacts/{ada.pk}/pause", {"weeks": 3})
    assert paused.status_code == 200 and paused.json()["paused_until"].startswith("2026-03-23T09:00")
    assert call(client, ws, "POST", f"/contacts/{ada.pk}/pause", {"weeks": 0}).status_code == 422
    assert call(client, ws, "DELETE", f"/contacts/{ada.pk}/pause").json()["paused_until"] is None


def test_suppressions_list_add_lift_and_csv(client, ws):
    for n in range(7):
        call(client, ws, "POST", "/suppressions", {"email": f"p{n}@acme.example",
                                                   "reason": "hard_bounce" if n % 2 else "manual"})
    added = call(client, ws, "POST", "/suppressions", {"email": "Ada@Acme.example", "detail": "asked by phone"})
    assert added.status_code == 201 and added.json()["email"] == "ada@acme.example"
    assert added.json()["created_by"].startswith("key:")
    assert call(client, ws, "POST", "/suppressions", {"email": "ada@acme.example"}).status_code == 200
    bad = call(client, ws, "POST", "/suppressions", {"email": "nope"})
    assert bad.status_code == 400 and "not an email address" in bad.json()["detail"]
    assert call(client, ws, "POST", "/suppressions", {"email": "x@acme.example", "reason": "spite"}).status_code == 422
    page = call(client, ws, "GET", "/suppressions?limit=3").json()
    seen = [s["email"] for s in page["items"]]
    while page["next"]:
        page = call(client, ws, "GET", f"/suppressions?limit=3&next={page['next']}").json()
        seen += [s["email"] for s in page["items"]]
    assert len(seen) == 8 and len(set(seen)) == 8 and seen[0] == "ada@acme.example"
    hard = call(client, ws, "GET", "/suppressions?reason=hard_bounce").json()["items"]
    assert {s["email"] for s in hard} == {"p1@acme.example", "p3@acme.example", "p5@acme.example"}
    assert [s["email"] for s in call(client, ws, "GET", "/suppressions?q=ADA").json()["items"]] == ["ada@acme.example"]
    assert call(client, ws, "GET", "/suppressions?next=garbage").status_code == 400
    lifted = call(client, ws, "POST", "/suppressions/lift", {"email": "ada@acme.example"})
    assert lifted.status_code == 200 and lifted.json()["lifted_at"] is not None
    assert call(client, ws, "POST", "/suppressions/lift", {"email": "ada@acme.example"}).status_code == 404
    assert [s["email"] for s in call(client, ws, "GET", "/suppressions?lifted=true").json()["items"]] == [
        "ada@acme.example"]
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("list.csv", b"email\nnew@acme.example\np1@acme.example\nbroken\n", content_type="text/csv")
    report = client.post(BASE + "/suppressions/csv", {"file": upload, "reason": "complaint"},
                         HTTP_AUTHORIZATION=ws.bearer)
    assert report.status_code == 200, report.content
    assert report.json() == {"rows": 3, "added": 1, "already": 1, "invalid": [
        {"row": 4, "reason": "'broken' is not an email address"}]}
    assert Suppression.objects.get(email="new@acme.example").reason == "complaint"
    empty = client.post(BASE + "/suppressions/csv", {"file": SimpleUploadedFile("e.csv", b"name\nx\n")},
                        HTTP_AUTHORIZATION=ws.bearer)
    assert empty.status_code == 400 and "email column" in empty.json()["detail"]


def test_another_workspaces_consent_data_is_invisible_and_untouchable(client, ws, other_ws):
    theirs = call(client, other_ws, "POST", "/topics", {"name": "Newsletter"}).json()
    their_person = Contact.objects.create(workspace=other_ws.workspace, email="eve@other.example")
    call(client, other_ws, "POST", "/suppressions", {"email": "eve@other.example"})
    assert call(client, ws, "GET", "/topics").json() == []
    assert call(client, ws, "GET", f"/topics/{theirs['id']}").status_code == 404
    assert call(client, ws, "PATCH", f"/topics/{theirs['id']}", {"name": "Mine"}).status_code == 404
    assert call(client, ws, "DELETE", f"/topics/{theirs['id']}").status_code == 404
    assert call(client, ws, "GET", f"/contacts/{their_person.pk}/subscriptions").status_code == 404
    assert call(client, ws, "POST", f"/contacts/{their_person.pk}/subscriptions",
                {"topic": "marketing", "granted": False}).status_code == 404
    assert call(client, ws, "POST", f"/contacts/{their_person.pk}/pause", {"weeks": 2}).status_code == 404
    assert call(client, ws, "GET", "/suppressions").json()["items"] == []
    assert call(client, ws, "POST", "/suppressions/lift", {"email": "eve@other.example"}).status_code == 404
    mine = Contact.objects.create(workspace=ws.workspace, email="ada@acme.example")
    assert call(client, ws, "POST", f"/contacts/{mine.pk}/subscriptions",
                {"topic": "newsletter", "granted": True}).status_code == 404  # their topic is not ours
    assert Topic.objects.get(pk=theirs["id"]).name == "Newsletter"
    assert Suppression.objects.get(workspace=other_ws.workspace).lifted_at is None
    assert not ConsentRecord.objects.filter(contact=their_person).exists()
    assert not Message.objects.exists()
    assert client.get(BASE + "/topics").status_code == 401
