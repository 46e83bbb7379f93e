"""The management API (/api/): its stable interface, auth, workspace isolation and every resource."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Company, Contact, ContactMerge, Identity
from leadflow.core.models import ApiKey, AuditEntry
from leadflow.core.services import api_key_revoke
from leadflow.tracking.models import Event, Form, LeadMagnet
from leadflow.tracking.sources import CHANNEL_LABELS, CHANNELS
from conftest import post_batch

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def call(client, keys, method: str, path: str, body=None, *, auth: str | None = None):
    headers = {"HTTP_AUTHORIZATION": auth if auth is not None else keys.bearer}
    if body is None:
        return client.generic(method, path, **headers)
    return client.generic(method, path, json.dumps(body), content_type="application/json", **headers)


def ingest(client, keys, messages: list) -> None:
    response = post_batch(client, keys, messages)
    assert response.status_code == 200, response.content
    assert not response.json().get("rejected"), response.json()


def identify(email: str, *, aid: str, user_id: str | None = None, traits: dict | None = None,
             campaign: dict | None = None, at: dt.datetime = T0) -> dict:
    msg = {"type": "identify", "anonymousId": aid, "traits": {"email": email, **(traits or {})},
           "timestamp": iso(at)}
    if user_id:
        msg["userId"] = user_id
    if campaign:
        msg["context"] = {"campaign": campaign, "page": {"url": "https://acme.test/landing"}}
    return msg


def track(event: str, *, aid: str, at: dt.datetime = T0, properties: dict | None = None,
          message_id: str | None = None) -> dict:
    msg = {"type": "track", "event": event, "anonymousId": aid, "timestamp": iso(at),
           "properties": properties or {}}
    if message_id:
        msg["messageId"] = message_id
    return msg


def contact_by_email(keys, email: str) -> Contact:
    return Contact.objects.get(workspace=keys.workspace, email=email)


def pages(client, keys, path: str, *, limit: int) -> list[list[dict]]:
    """Every page of a list, following `next` until it is null."""
    result, cursor = [], None
    sep = "&" if "?" in path else "?"
    for _ in range(100):
        url = f"{path}{sep}limit={limit}" + (f"&next={cursor}" if cursor else "")
        response = call(client, keys, "GET", url)
        assert response.status_code == 200, response.content
        body = response.json()
        assert set(body) == {"items", "next"}
        result.append(body["items"])
        cursor = body["next"]
        if cursor is None:
            return result
    raise AssertionError("pagination never ended")


@pytest.fixture
def people(client, ws, process, frozen_clock):
    """Three processed contacts of `ws` with UTMs, and one of another workspace is not here."""
    ingest(client, ws, [
        identify("ada@example.com", aid="a-ada", user_id="u-ada",
                 traits={"first_name": "Ada", "last_name": "Lovelace", "plan": "pro",
                         "company": {"name": "Analytical Engines", "domain": "engines.test"}},
                 campaign={"source": "google", "medium": "cpc", "name": "spring"}),
        identify("grace@example.com", aid="a-grace", user_id="u-grace",
                 traits={"first_name": "Grace", "last_name": "Hopper"},
                 campaign={"source": "newsletter", "medium": "email", "name": "march"}),
        identify("alan@example.com", aid="a-alan", traits={"first_name": "Alan"},
                 campaign={"source": "google", "medium": "cpc", "name": "spring"}),
    ])
    process()
    return {c.email: c for c in Contact.objects.filter(workspace=ws.workspace)}


# --- authentication --------------------------------------------------------------------------

PROTECTED = ["/api/contacts", "/api/companies", "/api/forms", "/api/magnets", "/api/sources",
             "/api/sources/channels", "/api/workspace"]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_endpoint_refuses_requests_without_a_valid_secret_key(client, ws, path):
    assert call(client, ws, "GET", path).status_code == 200
    assert client.get(path).status_code == 401
    assert call(client, ws, "GET", path, auth=f"Bearer {ws.write_key}").status_code == 401
    assert call(client, ws, "GET", path, auth=ws.basic_auth).status_code == 401
    assert call(client, ws, "GET", path, auth=f"Token {ws.secret_key}").status_code == 401
    assert call(client, ws, "GET", path, auth=f"Bearer {ws.secret_key}x").status_code == 401
    assert call(client, ws, "GET", path, auth="Bearer ").status_code == 401


def test_a_revoked_secret_key_is_refused(client, ws):
    assert call(client, ws, "GET", "/api/contacts").status_code == 200
    key = ApiKey.objects.get(workspace=ws.workspace, kind="secret")
    api_key_revoke(key=key)
    response = call(client, ws, "GET", "/api/contacts")
    assert response.status_code == 401
    assert call(client, ws, "POST", "/api/forms", {"name": "x", "fields": []}).status_code == 401


def test_writes_without_auth_change_nothing(client, ws, people):
    ada = people["ada@example.com"]
    response = client.generic("PATCH", f"/api/contacts/{ada.pk}", json.dumps({"traits": {"plan": "free"}}),
                              content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {ws.write_key}")
    assert response.status_code == 401
    assert client.delete(f"/api/contacts/{ada.pk}").status_code == 401
    ada.refresh_from_db()
    assert ada.traits["plan"] == "pro"


def test_workspace_info_is_the_keys_workspace(client, ws, other_ws):
    body = call(client, ws, "GET", "/api/workspace").json()
    assert body["slug"] == ws.workspace.slug == "acme-marketing"
    assert body["name"] == "Acme Marketing"
    assert call(client, other_ws, "GET", "/api/workspace").json()["slug"] == "other-company"


# --- OpenAPI -----------------------------------------------------------------------------------

def test_openapi_schema_lists_every_path_and_docs_are_served(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path, methods in {
        "/api/contacts": {"get"},
        "/api/contacts/{contact_id}": {"get", "patch", "delete"},
        "/api/contacts/{contact_id}/events": {"get"},
        "/api/contacts/{contact_id}/merge": {"post"},
        "/api/companies": {"get"},
        "/api/companies/{company_id}": {"get", "patch"},
        "/api/forms": {"get", "post"},
        "/api/forms/{form_id}": {"get", "patch", "delete"},
        "/api/magnets": {"get", "post"},
        "/api/magnets/{magnet_id}": {"get", "patch", "delete"},
        "/api/sources": {"get"},
        "/api/sources/channels": {"get"},
        "/api/workspace": {"get"},
    }.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    assert "bearer" in json.dumps(schema["components"]["securitySchemes"]).lower()
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert b"openapi.json" in docs.content


# --- contacts: list, filters, pagination -------------------------------------------------------

def test_contacts_list_shape_with_source_and_utm_values(client, ws, people):
    body = call(client, ws, "GET", "/api/contacts").json()
    assert body["next"] is None
    by_email = {item["email"]: item for item in body["items"]}
    assert set(by_email) == {"ada@example.com", "grace@example.com", "alan@example.com"}
    ada = by_email["ada@example.com"]
    assert ada["id"] == people["ada@example.com"].pk
    assert ada["user_id"] == "u-ada"
    assert ada["traits"]["plan"] == "pro"
    assert ada["first_name"] == "Ada"
    assert ada["source"]["channel"] == "paid_search"
    assert (ada["source"]["utm_source"], ada["source"]["utm_medium"], ada["source"]["utm_campaign"]) == \
        ("google", "cpc", "spring")
    assert ada["source"]["landing_page"] == "https://acme.test/landing"
    assert ada["company"]["name"] == "Analytical Engines"
    assert dt.datetime.fromisoformat(ada["created_at"].replace("Z", "+00:00")) == T0
    assert by_email["grace@example.com"]["source"]["channel"] == "email"
    assert by_email["alan@example.com"]["user_id"] is None
    assert [item["id"] for item in body["items"]] == sorted((c.pk for c in people.values()), reverse=True)


def test_contacts_filters_by_email_user_id_and_q(client, ws, people):
    def emails(query: str) -> list[str]:
        response = call(client, ws, "GET", f"/api/contacts?{query}")
        assert response.status_code == 200
        return sorted(item["email"] for item in response.json()["items"])

    assert emails("email=ADA@Example.com") == ["ada@example.com"]
    assert emails("email=nobody@example.com") == []
    assert emails("email=not-an-email") == []
    assert emails("user_id=u-grace") == ["grace@example.com"]
    assert emails("user_id=u-nobody") == []
    assert emails("q=hopper") == ["grace@example.com"]
    assert emails("q=analytical") == ["ada@example.com"]
    assert emails("q=example.com") == ["ada@example.com", "alan@example.com", "grace@example.com"]
    assert emails("q=a-alan") == ["alan@example.com"]  # an identity value


def test_contacts_paginate_with_a_cursor_over_several_pages(client, ws, process, frozen_clock):
    ingest(client, ws, [identify(f"p{n}@example.com", aid=f"a-{n}") for n in range(7)])
    process()
    result = pages(client, ws, "/api/contacts", limit=3)
    assert [len(page) for page in result] == [3, 3, 1]
    ids = [item["id"] for page in result for item in page]
    assert ids == sorted(Contact.objects.filter(workspace=ws.workspace).values_list("pk", flat=True),
                         reverse=True)
    # the same through a filter
    result = pages(client, ws, "/api/contacts?q=example.com", limit=2)
    assert [len(page) for page in result] == [2, 2, 2, 1]
    assert len({item["id"] for page in result for item in page}) == 7


def test_a_new_contact_does_not_shift_the_next_page(client, ws, process, frozen_clock):
    ingest(client, ws, [identify(f"p{n}@example.com", aid=f"a-{n}") for n in range(4)])
    process()
    first = call(client, ws, "GET", "/api/contacts?limit=2").json()
    ingest(client, ws, [identify("late@example.com", aid="a-late")])
    process()
    second = call(client, ws, "GET", f"/api/contacts?limit=2&next={first['next']}").json()
    seen = [i["email"] for i in first["items"] + second["items"]]
    assert len(set(seen)) == 4 and "late@example.com" not in seen
    assert second["next"] is None


def test_bad_cursor_and_limit_answer_with_the_field_named(client, ws, people):
    response = call(client, ws, "GET", "/api/contacts?next=not-a-cursor")
    assert response.status_code == 400
    assert "next" in response.json()["detail"]
    response = call(client, ws, "GET", "/api/contacts?limit=0")
    assert response.status_code == 422
    assert "limit" in response.json()["detail"]
    response = call(client, ws, "GET", "/api/contacts?limit=501")
    assert response.status_code == 422
    # a cursor of another list is refused rather than misread
    ada = people["ada@example.com"]
    contacts_cursor = call(client, ws, "GET", "/api/contacts?limit=1").json()["next"]
    response = call(client, ws, "GET", f"/api/contacts/{ada.pk}/events?next={contacts_cursor}")
    assert response.status_code == 400


# --- contacts: events timeline -----------------------------------------------------------------

def test_events_are_oldest_first_across_pages_when_they_arrive_out_of_order(client, ws, process, frozen_clock):
    # Arrival (id) order is the reverse of time order; two events share a timestamp.
    ingest(client, ws, [identify("ada@example.com", aid="a-ada", at=T0 + dt.timedelta(hours=10))])
    for hour in (9, 7, 5, 5, 3, 1, 8, 2):
        ingest(client, ws, [track(f"Step {hour}", aid="a-ada", at=T0 + dt.timedelta(hours=hour))])
    process()
    ada = contact_by_email(ws, "ada@example.com")
    result = pages(client, ws, f"/api/contacts/{ada.pk}/events", limit=3)
    assert len(result) == 4  # the nine events sent and the `Lifecycle Stage Changed` (→ lead) one
    items = [item for page in result for item in page if item["event"] != "Lifecycle Stage Changed"]
    assert len(items) == 9 == len({item["id"] for item in items})
    stamps = [dt.datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00")) for item in items]
    assert stamps == sorted(stamps)
    assert [s - T0 for s in stamps][:3] == [dt.timedelta(hours=h) for h in (1, 2, 3)]
    fives = [item["id"] for item in items if item["event"] == "Step 5"]
    assert fives == sorted(fives)  # equal times: arrival order
    first = items[0]
    assert first["type"] == "track" and first["event"] == "Step 1"
    assert set(first) >= {"type", "event", "properties", "context", "timestamp"}
    assert items[-1]["type"] == "identify"
    # the name filter paginates the same way
    only = [i for page in pages(client, ws, f"/api/contacts/{ada.pk}/events?event=Step+5", limit=1)
            for i in page]
    assert [i["id"] for i in only] == fives


def test_events_of_an_unknown_contact_are_404(client, ws):
    assert call(client, ws, "GET", "/api/contacts/999999/events").status_code == 404


# --- contacts: get, traits, delete, merge -------------------------------------------------------

def test_get_contact_with_identities(client, ws, people):
    ada = people["ada@example.com"]
    body = call(client, ws, "GET", f"/api/contacts/{ada.pk}").json()
    assert body["id"] == ada.pk
    assert {(i["kind"], i["value"]) for i in body["identities"]} == {
        ("email", "ada@example.com"), ("user_id", "u-ada"), ("anonymous_id", "a-ada")}
    assert body["merged_from"] == []
    response = call(client, ws, "GET", "/api/contacts/999999")
    assert response.status_code == 404
    assert "999999" in response.json()["detail"]


def test_patch_sets_traits_and_null_removes_one(client, ws, people, frozen_clock):
    ada = people["ada@example.com"]
    frozen_clock.advance(minutes=5)
    response = call(client, ws, "PATCH", f"/api/contacts/{ada.pk}",
                    {"traits": {"plan": None, "tier": "gold", "title": "Countess"}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert "plan" not in body["traits"]
    assert body["traits"]["tier"] == "gold"
    assert body["title"] == "Countess"
    ada.refresh_from_db()
    assert "plan" not in ada.traits and ada.traits["tier"] == "gold"
    assert AuditEntry.objects.filter(workspace=ws.workspace, action="contact.update",
                                     target=f"contact:{ada.pk}", actor__startswith="key:lfs_").exists()
    bad = call(client, ws, "PATCH", f"/api/contacts/{ada.pk}", {"traits": ["plan"]})
    assert bad.status_code == 422
    assert "traits" in bad.json()["detail"]
    assert call(client, ws, "PATCH", f"/api/contacts/{ada.pk}", {}).status_code == 422


def test_delete_removes_the_contact_its_identities_and_events(client, ws, people):
    ingest(client, ws, [track("Viewed Pricing", aid="a-ada")])
    from leadflow.core.pipeline import process_pending

    process_pending()
    ada = people["ada@example.com"]
    assert Event.objects.filter(contact=ada).exclude(event="Lifecycle Stage Changed").count() == 2
    response = call(client, ws, "DELETE", f"/api/contacts/{ada.pk}")
    assert response.status_code == 204
    assert not Contact.objects.filter(pk=ada.pk).exists()
    assert not Event.objects.filter(workspace=ws.workspace, anonymous_id="a-ada").exists()
    assert not Identity.objects.filter(workspace=ws.workspace, value="ada@example.com").exists()
    assert call(client, ws, "GET", f"/api/contacts/{ada.pk}").status_code == 404
    assert call(client, ws, "DELETE", f"/api/contacts/{ada.pk}").status_code == 404
    assert Contact.objects.filter(workspace=ws.workspace).count() == 2


def test_manual_merge_moves_events_and_identities_and_the_old_id_answers_with_the_survivor(
        client, ws, people, process):
    ingest(client, ws, [track("Webinar Joined", aid="a-alan"), track("Viewed Pricing", aid="a-ada")])
    process()
    ada, alan = people["ada@example.com"], people["alan@example.com"]
    ConsentRecord.objects.create(workspace=ws.workspace, contact=alan, topic="marketing",
                                 status="granted", source="api")
    alan_events = set(Event.objects.filter(contact=alan).exclude(event="Lifecycle Stage Changed").values_list("pk", flat=True))
    assert len(alan_events) == 2

    response = call(client, ws, "POST", f"/api/contacts/{ada.pk}/merge", {"other_id": alan.pk})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == ada.pk
    assert body["merged_from"] == [alan.pk]
    assert {("email", "alan@example.com"), ("anonymous_id", "a-alan"), ("email", "ada@example.com")} <= \
        {(i["kind"], i["value"]) for i in body["identities"]}
    assert not Contact.objects.filter(pk=alan.pk).exists()
    assert alan_events <= set(Event.objects.filter(contact=ada).values_list("pk", flat=True))
    assert ConsentRecord.objects.get(topic="marketing").contact_id == ada.pk
    merge = ContactMerge.objects.get(loser_id=alan.pk)
    assert merge.winner_id == ada.pk and merge.reason == "manual"

    # the merged-away id answers via the survivor, for the profile and the timeline
    assert call(client, ws, "GET", f"/api/contacts/{alan.pk}").json()["id"] == ada.pk
    events = call(client, ws, "GET", f"/api/contacts/{alan.pk}/events").json()["items"]
    assert {"Webinar Joined", "Viewed Pricing"} <= {e["event"] for e in events}
    # the email lookup now finds the survivor
    found = call(client, ws, "GET", "/api/contacts?email=alan@example.com").json()["items"]
    assert [c["id"] for c in found] == [ada.pk]
    # retrying the same merge is harmless; deleting through the old id is refused with a pointer
    again = call(client, ws, "POST", f"/api/contacts/{ada.pk}/merge", {"other_id": alan.pk})
    assert again.status_code == 200 and again.json()["id"] == ada.pk
    refused = call(client, ws, "DELETE", f"/api/contacts/{alan.pk}")
    assert refused.status_code == 404 and str(ada.pk) in refused.json()["detail"]
    assert Contact.objects.filter(pk=ada.pk).exists()


def test_merge_input_errors(client, ws, people):
    ada = people["ada@example.com"]
    response = call(client, ws, "POST", f"/api/contacts/{ada.pk}/merge", {"other_id": ada.pk})
    assert response.status_code == 400
    assert "itself" in response.json()["detail"]
    response = call(client, ws, "POST", f"/api/contacts/{ada.pk}/merge", {"other_id": 999999})
    assert response.status_code == 404
    assert "other_id" in response.json()["detail"]
    response = call(client, ws, "POST", f"/api/contacts/{ada.pk}/merge", {})
    assert response.status_code == 422
    assert "other_id" in response.json()["detail"]
    response = call(client, ws, "POST", "/api/contacts/999999/merge", {"other_id": ada.pk})
    assert response.status_code == 404
    assert Contact.objects.filter(workspace=ws.workspace).count() == 3


# --- workspace isolation -----------------------------------------------------------------------

def test_contacts_of_another_workspace_are_invisible_and_untouchable(client, ws, other_ws, people, process):
    ingest(client, other_ws, [identify("ada@example.com", aid="a-ada", user_id="u-ada",
                                       traits={"plan": "other"})])
    process()
    theirs = contact_by_email(other_ws, "ada@example.com")
    mine = people["ada@example.com"]

    listed = call(client, ws, "GET", "/api/contacts?email=ada@example.com").json()["items"]
    assert [c["id"] for c in listed] == [mine.pk]
    assert theirs.pk not in {c["id"] for c in call(client, ws, "GET", "/api/contacts?limit=500").json()["items"]}
    assert theirs.pk not in {c["id"] for c in call(client, ws, "GET", "/api/contacts?user_id=u-ada").json()["items"]}
    assert call(client, ws, "GET", f"/api/contacts/{theirs.pk}").status_code == 404
    assert call(client, ws, "GET", f"/api/contacts/{theirs.pk}/events").status_code == 404
    assert call(client, ws, "PATCH", f"/api/contacts/{theirs.pk}", {"traits": {"plan": "x"}}).status_code == 404
    assert call(client, ws, "DELETE", f"/api/contacts/{theirs.pk}").status_code == 404
    assert call(client, ws, "POST", f"/api/contacts/{mine.pk}/merge", {"other_id": theirs.pk}).status_code == 404
    assert call(client, ws, "POST", f"/api/contacts/{theirs.pk}/merge", {"other_id": mine.pk}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.traits["plan"] == "other"
    assert Event.objects.filter(contact=theirs).exclude(event="Lifecycle Stage Changed").count() == 1
    assert not ContactMerge.objects.exists()
    # and the other way round
    assert call(client, other_ws, "GET", f"/api/contacts/{mine.pk}").status_code == 404


def test_a_merge_record_of_another_workspace_does_not_leak(client, ws, other_ws, process):
    ingest(client, other_ws, [identify("a@example.com", aid="x1"), identify("b@example.com", aid="x2")])
    process()
    a, b = (contact_by_email(other_ws, e) for e in ("a@example.com", "b@example.com"))
    assert call(client, other_ws, "POST", f"/api/contacts/{a.pk}/merge", {"other_id": b.pk}).status_code == 200
    assert call(client, other_ws, "GET", f"/api/contacts/{b.pk}").json()["id"] == a.pk
    assert call(client, ws, "GET", f"/api/contacts/{b.pk}").status_code == 404


# --- companies ---------------------------------------------------------------------------------

def test_companies_list_get_patch(client, ws, people, process, frozen_clock):
    ingest(client, ws, [
        identify("grace@example.com", aid="a-grace", traits={"company": {"name": "Analytical Engines"}}),
        {"type": "group", "groupId": "g-navy", "anonymousId": "a-alan",
         "traits": {"name": "US Navy", "domain": "navy.test", "industry": "defence"}},
    ])
    process()
    engines = Company.objects.get(workspace=ws.workspace, name="Analytical Engines")
    navy = Company.objects.get(workspace=ws.workspace, group_id="g-navy")

    items = call(client, ws, "GET", "/api/companies").json()["items"]
    assert [c["id"] for c in items] == [navy.pk, engines.pk]
    assert {c["name"]: c["contacts_count"] for c in items} == {"Analytical Engines": 2, "US Navy": 1}
    assert [c["name"] for c in call(client, ws, "GET", "/api/companies?q=navy").json()["items"]] == ["US Navy"]
    assert [c["name"] for c in call(client, ws, "GET", "/api/companies?q=engines.test").json()["items"]] == \
        ["Analytical Engines"]
    result = pages(client, ws, "/api/companies", limit=1)
    assert [[c["id"] for c in page] for page in result] == [[navy.pk], [engines.pk]]

    body = call(client, ws, "GET", f"/api/companies/{navy.pk}").json()
    assert body["group_id"] == "g-navy" and body["traits"]["industry"] == "defence"
    assert body["contacts_count"] == 1

    response = call(client, ws, "PATCH", f"/api/companies/{navy.pk}",
                    {"name": "United States Navy", "domain": "https://www.Navy.mil/about",
                     "traits": {"industry": None, "size": 300000}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "United States Navy" and body["domain"] == "navy.mil"
    assert "industry" not in body["traits"] and body["traits"]["size"] == 300000
    assert body["contacts_count"] == 1
    navy.refresh_from_db()
    assert navy.name == "United States Navy"
    assert "industry" not in navy.traits and navy.traits["size"] == 300000

    bad = call(client, ws, "PATCH", f"/api/companies/{navy.pk}", {"domain": "not a domain"})
    assert bad.status_code == 400 and "domain" in bad.json()["detail"]
    navy.refresh_from_db()
    assert navy.domain == "navy.mil"
    assert call(client, ws, "GET", "/api/companies/999999").status_code == 404


def test_companies_of_another_workspace_are_invisible_and_untouchable(client, ws, other_ws, people, process):
    ingest(client, other_ws, [identify("x@other.test", aid="o1", traits={"company": {"name": "Analytical Engines"}})])
    process()
    theirs = Company.objects.get(workspace=other_ws.workspace)
    listed = call(client, ws, "GET", "/api/companies?q=Analytical").json()["items"]
    assert [c["id"] for c in listed] == [Company.objects.get(workspace=ws.workspace).pk]
    assert call(client, ws, "GET", f"/api/companies/{theirs.pk}").status_code == 404
    assert call(client, ws, "PATCH", f"/api/companies/{theirs.pk}", {"name": "Taken"}).status_code == 404
    theirs.refresh_from_db()
    assert theirs.name == "Analytical Engines"


# --- forms -------------------------------------------------------------------------------------

FIELDS = [{"name": "email", "label": "Work email", "type": "email", "required": True},
          {"name": "first_name", "type": "text"}]


def test_forms_crud_with_hosted_url_and_embed_snippet(client, ws, settings, frozen_clock):
    settings.PUBLIC_URL = "https://leads.example.com"
    response = call(client, ws, "POST", "/api/forms",
                    {"name": "Demo request", "fields": FIELDS, "consent_text": "Email me",
                     "redirect_url": "https://acme.test/thanks"})
    assert response.status_code == 201, response.content
    form = response.json()
    assert form["slug"] == "demo-request"
    assert form["fields"][0] == {"name": "email", "label": "Work email", "type": "email", "required": True}
    assert form["hosted_url"] == "https://leads.example.com/f/acme-marketing/demo-request/"
    assert 'data-leadflow-form="acme-marketing/demo-request"' in form["embed_snippet"]
    assert "https://leads.example.com/t/lf.js" in form["embed_snippet"]
    assert form["archived_at"] is None and form["lead_magnet"] is None
    assert client.get("/f/acme-marketing/demo-request/").status_code == 200

    assert call(client, ws, "GET", f"/api/forms/{form['id']}").json() == form
    assert [f["id"] for f in call(client, ws, "GET", "/api/forms").json()["items"]] == [form["id"]]

    frozen_clock.advance(minutes=1)
    response = call(client, ws, "PATCH", f"/api/forms/{form['id']}", {"name": "Book a demo", "slug": "book-demo"})
    assert response.status_code == 200, response.content
    updated = response.json()
    assert updated["name"] == "Book a demo" and updated["slug"] == "book-demo"
    assert updated["fields"] == form["fields"]  # untouched
    assert updated["consent_text"] == "Email me" and updated["redirect_url"] == "https://acme.test/thanks"
    assert updated["hosted_url"].endswith("/f/acme-marketing/book-demo/")
    assert updated["updated_at"] != form["updated_at"]

    assert call(client, ws, "DELETE", f"/api/forms/{form['id']}").status_code == 204
    assert Form.objects.get(pk=form["id"]).archived_at == frozen_clock.current
    assert call(client, ws, "GET", "/api/forms").json()["items"] == []
    archived = call(client, ws, "GET", "/api/forms?archived=true").json()["items"]
    assert [f["id"] for f in archived] == [form["id"]] and archived[0]["archived_at"] is not None
    assert call(client, ws, "GET", f"/api/forms/{form['id']}").json()["archived_at"] is not None
    assert client.get("/f/acme-marketing/book-demo/").status_code == 404


def test_hosted_url_falls_back_to_the_request_host(client, ws, settings):
    settings.PUBLIC_URL = ""
    form = call(client, ws, "POST", "/api/forms", {"name": "Contact", "fields": FIELDS}).json()
    assert form["hosted_url"] == "http://testserver/f/acme-marketing/contact/"


def test_form_validation_errors_name_the_problem(client, ws):
    no_email = call(client, ws, "POST", "/api/forms", {"name": "No email", "fields": [{"name": "first_name"}]})
    assert no_email.status_code == 400
    assert "email" in no_email.json()["detail"]
    bad_field = call(client, ws, "POST", "/api/forms",
                     {"name": "Bad", "fields": FIELDS + [{"name": "Bad Name", "type": "text"}]})
    assert bad_field.status_code == 400 and "field 3" in bad_field.json()["detail"]
    bad_url = call(client, ws, "POST", "/api/forms", {"name": "Bad URL", "fields": FIELDS, "redirect_url": "nope"})
    assert bad_url.status_code == 400 and "redirect_url" in bad_url.json()["detail"]
    missing = call(client, ws, "POST", "/api/forms", {"fields": FIELDS})
    assert missing.status_code == 422 and "name" in missing.json()["detail"]
    assert not Form.objects.exists()

    assert call(client, ws, "POST", "/api/forms", {"name": "Demo", "fields": FIELDS}).status_code == 201
    dup = call(client, ws, "POST", "/api/forms", {"name": "Other", "slug": "demo", "fields": FIELDS})
    assert dup.status_code == 400 and "demo" in dup.json()["detail"]
    second = call(client, ws, "POST", "/api/forms", {"name": "Second", "fields": FIELDS}).json()
    clash = call(client, ws, "PATCH", f"/api/forms/{second['id']}", {"slug": "demo"})
    assert clash.status_code == 400 and "already exists" in clash.json()["detail"]
    no_email = call(client, ws, "PATCH", f"/api/forms/{second['id']}", {"fields": [{"name": "first_name"}]})
    assert no_email.status_code == 400 and "email" in no_email.json()["detail"]
    bad_url = call(client, ws, "PATCH", f"/api/forms/{second['id']}", {"redirect_url": "ftp://x.test/"})
    assert bad_url.status_code == 400 and "redirect_url" in bad_url.json()["detail"]
    assert Form.objects.get(pk=second["id"]).slug == "second"


def test_form_with_a_lead_magnet(client, ws, other_ws):
    magnet = call(client, ws, "POST", "/api/magnets",
                  {"name": "Ebook", "delivery_url": "https://cdn.acme.test/ebook.pdf"}).json()
    theirs = call(client, other_ws, "POST", "/api/magnets",
                  {"name": "Theirs", "delivery_url": "https://cdn.other.test/x.pdf"}).json()
    form = call(client, ws, "POST", "/api/forms", {"name": "Get it", "fields": FIELDS, "lead_magnet": "ebook"}).json()
    assert form["lead_magnet"] == {"id": magnet["id"], "slug": "ebook", "name": "Ebook"}
    kept = call(client, ws, "PATCH", f"/api/forms/{form['id']}", {"name": "Get the ebook"}).json()
    assert kept["lead_magnet"]["id"] == magnet["id"]
    refused = call(client, ws, "PATCH", f"/api/forms/{form['id']}", {"lead_magnet": theirs["id"]})
    assert refused.status_code == 400 and "lead magnet" in refused.json()["detail"]
    assert Form.objects.get(pk=form["id"]).lead_magnet_id == magnet["id"]
    detached = call(client, ws, "PATCH", f"/api/forms/{form['id']}", {"lead_magnet": None}).json()
    assert detached["lead_magnet"] is None


def test_forms_of_another_workspace_are_invisible_and_untouchable(client, ws, other_ws):
    theirs = call(client, other_ws, "POST", "/api/forms", {"name": "Demo", "fields": FIELDS}).json()
    mine = call(client, ws, "POST", "/api/forms", {"name": "Demo", "fields": FIELDS})
    assert mine.status_code == 201  # slugs are per workspace
    assert [f["id"] for f in call(client, ws, "GET", "/api/forms").json()["items"]] == [mine.json()["id"]]
    assert call(client, ws, "GET", f"/api/forms/{theirs['id']}").status_code == 404
    assert call(client, ws, "PATCH", f"/api/forms/{theirs['id']}", {"name": "Mine now"}).status_code == 404
    assert call(client, ws, "DELETE", f"/api/forms/{theirs['id']}").status_code == 404
    row = Form.objects.get(pk=theirs["id"])
    assert row.name == "Demo" and row.archived_at is None


# --- lead magnets ------------------------------------------------------------------------------

def test_magnets_crud_and_validation(client, ws, frozen_clock):
    response = call(client, ws, "POST", "/api/magnets",
                    {"name": "State of Nurture 2026", "kind": "report",
                     "delivery_url": "https://cdn.acme.test/state.pdf", "description": "Yearly"})
    assert response.status_code == 201, response.content
    magnet = response.json()
    assert magnet["slug"] == "state-of-nurture-2026" and magnet["kind"] == "report"
    assert magnet["downloads"] == 0 and magnet["form_submissions"] == 0
    assert call(client, ws, "GET", f"/api/magnets/{magnet['id']}").json() == magnet

    bad_url = call(client, ws, "POST", "/api/magnets", {"name": "X", "delivery_url": "not a url"})
    assert bad_url.status_code == 400 and "URL" in bad_url.json()["detail"]
    bad_kind = call(client, ws, "POST", "/api/magnets",
                    {"name": "X", "kind": "podcast", "delivery_url": "https://x.test/"})
    assert bad_kind.status_code == 400 and "kind" in bad_kind.json()["detail"]
    dup = call(client, ws, "POST", "/api/magnets",
               {"name": "Other", "slug": "state-of-nurture-2026", "delivery_url": "https://x.test/"})
    assert dup.status_code == 400 and "already exists" in dup.json()["detail"]
    missing = call(client, ws, "POST", "/api/magnets", {"name": "X"})
    assert missing.status_code == 422 and "delivery_url" in missing.json()["detail"]
    assert LeadMagnet.objects.count() == 1

    updated = call(client, ws, "PATCH", f"/api/magnets/{magnet['id']}", {"delivery_url": "https://cdn.acme.test/v2.pdf"})
    assert updated.status_code == 200
    assert updated.json()["delivery_url"] == "https://cdn.acme.test/v2.pdf"
    assert updated.json()["name"] == "State of Nurture 2026" and updated.json()["kind"] == "report"
    bad = call(client, ws, "PATCH", f"/api/magnets/{magnet['id']}", {"delivery_url": "javascript:alert(1)"})
    assert bad.status_code == 400
    assert LeadMagnet.objects.get().delivery_url == "https://cdn.acme.test/v2.pdf"

    assert call(client, ws, "DELETE", f"/api/magnets/{magnet['id']}").status_code == 204
    assert LeadMagnet.objects.get().archived_at == frozen_clock.current
    assert call(client, ws, "GET", "/api/magnets").json()["items"] == []
    assert [m["id"] for m in call(client, ws, "GET", "/api/magnets?archived=true").json()["items"]] == [magnet["id"]]


def test_magnet_counts_come_from_the_event_log(client, ws, other_ws):
    for name in ("Ebook", "Webinar", "Checklist"):
        call(client, ws, "POST", "/api/magnets", {"name": name, "delivery_url": "https://cdn.acme.test/f"})
    call(client, other_ws, "POST", "/api/magnets", {"name": "Ebook", "delivery_url": "https://cdn.other.test/f"})
    ingest(client, ws, [
        *[track("Asset Downloaded", aid=f"d{n}", properties={"magnet_slug": "ebook"}) for n in range(3)],
        *[track("Form Submitted", aid=f"f{n}", properties={"magnet_slug": "ebook", "form_slug": "get"})
          for n in range(2)],
        track("Asset Downloaded", aid="w1", properties={"magnet_slug": "webinar"}),
        track("Viewed Page", aid="v1", properties={"magnet_slug": "ebook"}),
        track("Form Submitted", aid="f9", properties={"form_slug": "contact"}),
    ])
    ingest(client, other_ws, [track("Asset Downloaded", aid="o1", properties={"magnet_slug": "ebook"})])

    items = call(client, ws, "GET", "/api/magnets").json()["items"]
    counts = {m["slug"]: (m["downloads"], m["form_submissions"]) for m in items}
    assert counts == {"ebook": (3, 2), "webinar": (1, 0), "checklist": (0, 0)}
    ebook = next(m for m in items if m["slug"] == "ebook")
    assert call(client, ws, "GET", f"/api/magnets/{ebook['id']}").json()["downloads"] == 3
    theirs = call(client, other_ws, "GET", "/api/magnets").json()["items"]
    assert [(m["downloads"], m["form_submissions"]) for m in theirs] == [(1, 0)]

    # counts are one query for the page, not one per magnet
    with CaptureQueriesContext(connection) as one:
        call(client, ws, "GET", "/api/magnets?limit=1")
    with CaptureQueriesContext(connection) as three:
        call(client, ws, "GET", "/api/magnets?limit=3")
    assert len(three) == len(one)


def test_magnets_of_another_workspace_are_invisible_and_untouchable(client, ws, other_ws):
    theirs = call(client, other_ws, "POST", "/api/magnets",
                  {"name": "Ebook", "delivery_url": "https://cdn.other.test/e.pdf"}).json()
    assert call(client, ws, "GET", "/api/magnets").json()["items"] == []
    assert call(client, ws, "GET", f"/api/magnets/{theirs['id']}").status_code == 404
    assert call(client, ws, "PATCH", f"/api/magnets/{theirs['id']}", {"name": "Mine"}).status_code == 404
    assert call(client, ws, "DELETE", f"/api/magnets/{theirs['id']}").status_code == 404
    row = LeadMagnet.objects.get(pk=theirs["id"])
    assert row.name == "Ebook" and row.archived_at is None


# --- sources -----------------------------------------------------------------------------------

def test_sources_count_contacts_per_channel_with_utm_breakdown(client, ws, other_ws, people, process):
    ingest(client, ws, [
        identify("linus@example.com", aid="a-linus", campaign={"source": "linkedin", "medium": "paid-social",
                                                               "name": "launch"}),
        identify("ken@example.com", aid="a-ken", campaign={"source": "google", "medium": "cpc", "name": "brand"}),
        identify("api@example.com", aid="a-api"),
    ])
    ingest(client, other_ws, [identify("x@other.test", aid="o1",
                                       campaign={"source": "google", "medium": "cpc", "name": "spring"})])
    process()
    body = call(client, ws, "GET", "/api/sources").json()
    assert body["total_contacts"] == 6
    channels = {c["channel"]: c for c in body["channels"]}
    assert [c["channel"] for c in body["channels"]][: len(CHANNELS)] == list(CHANNELS)
    paid = channels["paid_search"]
    assert paid["label"] == "Paid search"
    assert paid["contacts"] == 3
    assert paid["breakdown"] == [
        {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "spring", "contacts": 2},
        {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "brand", "contacts": 1},
    ]
    assert channels["email"]["contacts"] == 1
    assert channels["email"]["breakdown"] == [
        {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "march", "contacts": 1}]
    assert channels["paid_social"]["contacts"] == 1
    assert channels["other"]["breakdown"] == [
        {"utm_source": "", "utm_medium": "", "utm_campaign": "", "contacts": 1}]
    assert channels["referral"] == {"channel": "referral", "label": "Referral", "contacts": 0, "breakdown": []}
    assert sum(c["contacts"] for c in body["channels"]) + body["unattributed"] == body["total_contacts"]

    other = call(client, other_ws, "GET", "/api/sources").json()
    assert other["total_contacts"] == 1
    assert {c["channel"]: c["contacts"] for c in other["channels"]}["paid_search"] == 1


def test_source_channel_vocabulary(client, ws):
    body = call(client, ws, "GET", "/api/sources/channels").json()
    assert [c["channel"] for c in body] == list(CHANNELS)
    assert all(c["label"] == CHANNEL_LABELS[c["channel"]] for c in body)
