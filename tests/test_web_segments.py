"""Segment pages: the builder saves what it shows, the live count, members, static lists, roles."""

from __future__ import annotations

import orjson
import pytest
from django.test import Client

from leadflow.core.services import user_create
from leadflow.segments.models import Segment, SegmentMember

from conftest import post_batch


@pytest.fixture
def marketer(ws):
    c = Client()
    c.force_login(user_create(username="mara", password="pw-mara-123", workspace=ws.workspace, role="marketer"))
    return c


def _people(client, ws, process):
    post_batch(client, ws, [
        {"type": "identify", "userId": f"u{n}", "traits": {"email": f"p{n}@acme.example", "plan": "pro" if n % 2 else "free"}}
        for n in range(6)] + [
        {"type": "page", "userId": "u1", "name": "Pricing", "context": {"page": {"url": "https://acme.example/pricing"}}},
        {"type": "page", "userId": "u3", "name": "Pricing", "context": {"page": {"url": "https://acme.example/pricing"}}},
    ])
    process()


def test_preview_counts_an_unsaved_filter_and_names_errors(client, ws, marketer, process):
    _people(client, ws, process)
    good = {"version": 1, "all": [{"field": "traits.plan", "op": "eq", "value": "pro"},
                                  {"visited": "/pricing*", "count": {"op": "gte", "value": 1}}]}
    resp = marketer.post("/segments/preview/", orjson.dumps(good), content_type="application/json")
    assert resp.status_code == 200 and resp.json()["count"] == 2
    assert {c["email"] for c in resp.json()["sample"]} == {"p1@acme.example", "p3@acme.example"}
    bad = {"version": 1, "all": [{"field": "traits.plan", "op": "bogus", "value": 1}]}
    resp = marketer.post("/segments/preview/", orjson.dumps(bad), content_type="application/json")
    assert resp.status_code == 400 and resp.json()["path"].startswith("all[0]")


def test_create_edit_and_view_a_dynamic_segment(client, ws, marketer, process):
    _people(client, ws, process)
    definition = {"version": 1, "all": [{"field": "traits.plan", "op": "eq", "value": "pro"}]}
    resp = marketer.post("/segments/new/", {"name": "Pro plan", "kind": "dynamic",
                                            "definition": orjson.dumps(definition).decode()})
    segment = Segment.objects.get(workspace=ws.workspace, name="Pro plan")
    assert resp.status_code == 302 and resp["Location"] == f"/segments/{segment.pk}/"
    assert SegmentMember.objects.filter(segment=segment).count() == 3
    page = marketer.get(f"/segments/{segment.pk}/").content.decode()
    assert "p1@acme.example" in page and "3 members" in page
    narrower = {"version": 1, "all": [{"field": "traits.plan", "op": "eq", "value": "pro"},
                                      {"visited": "/pricing*"}]}
    marketer.post(f"/segments/{segment.pk}/edit/", {"name": "Pro plan", "definition": orjson.dumps(narrower).decode()})
    segment.refresh_from_db()
    assert segment.version == 2 and SegmentMember.objects.filter(segment=segment).count() == 2
    csv = b"".join(marketer.get(f"/segments/{segment.pk}/members.csv").streaming_content).decode()
    assert "p1@acme.example" in csv and "p5@acme.example" not in csv
    listing = marketer.get("/segments/").content.decode()
    assert "Pro plan" in listing
    editor = marketer.get(f"/segments/{segment.pk}/edit/").content.decode()
    assert 'id="builder-options"' in editor and "segment-builder.js" in editor


def test_invalid_filter_rerenders_with_the_error_and_saves_nothing(ws, marketer):
    resp = marketer.post("/segments/new/", {"name": "Broken", "kind": "dynamic",
                                            "definition": '{"version": 1, "all": [{"field": "nope", "op": "eq", "value": 1}]}'})
    assert resp.status_code == 200 and "nope" in resp.content.decode()
    assert not Segment.objects.filter(name="Broken").exists()


def test_static_list_by_hand(client, ws, marketer, process):
    _people(client, ws, process)
    marketer.post("/segments/new/", {"name": "VIPs", "kind": "static", "definition": ""})
    segment = Segment.objects.get(name="VIPs")
    resp = marketer.post(f"/segments/{segment.pk}/members/", {"emails": "p0@acme.example\nnobody@acme.example",
                                                              "action": "add"}, follow=True)
    assert "Added 1 contact" in resp.content.decode() and "1 not found" in resp.content.decode()
    assert list(SegmentMember.objects.filter(segment=segment).values_list("contact__email", flat=True)) == ["p0@acme.example"]


def test_roles_and_isolation(client, ws, other_ws, process):
    analyst = Client()
    analyst.force_login(user_create(username="ana", password="pw-ana-1234", workspace=ws.workspace, role="analyst"))
    assert analyst.get("/segments/").status_code == 200
    assert analyst.get("/segments/new/").status_code == 403
    outsider = Client()
    outsider.force_login(user_create(username="zoe", password="pw-zoe-1234", workspace=other_ws.workspace, role="admin"))
    from leadflow.segments.services import segment_create

    mine = segment_create(workspace=ws.workspace, name="Mine", kind="static", actor="test")
    assert outsider.get(f"/segments/{mine.pk}/").status_code == 404


def test_profile_lists_the_contacts_segments(client, ws, marketer, process):
    _people(client, ws, process)
    definition = {"version": 1, "all": [{"field": "traits.plan", "op": "eq", "value": "pro"}]}
    marketer.post("/segments/new/", {"name": "Pro plan", "kind": "dynamic", "definition": orjson.dumps(definition).decode()})
    from leadflow.contacts.models import Contact

    pro = Contact.objects.get(email="p1@acme.example")
    free = Contact.objects.get(email="p0@acme.example")
    assert "Pro plan" in marketer.get(f"/contacts/{pro.pk}/").content.decode()
    assert "In no segment" in marketer.get(f"/contacts/{free.pk}/").content.decode()
