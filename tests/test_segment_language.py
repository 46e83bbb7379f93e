"""The segment filter language: parse errors with their paths, every condition compiled to SQL and
checked against hand-made data, the issue's example, and property tests that the SQL compilation
agrees with the reference evaluator on random filters over random data (SQLite and PostgreSQL:
run with LEADFLOW_TEST_DATABASE_URL for the latter)."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Company, Contact
from leadflow.core import clock as clock_module
from leadflow.core.services import user_create, workspace_create
from leadflow.segments.compiler import filter_q
from leadflow.segments.evaluator import contact_facts_load, filter_matches
from leadflow.segments.language import (
    FilterError,
    filter_dump,
    filter_event_names,
    filter_parse,
    filter_segment_refs,
    filter_time_sensitive,
)
from leadflow.segments.models import Segment, SegmentMember
from leadflow.segments.preview import segment_preview
from leadflow.tracking.models import Event

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def ago(days: float = 0, hours: float = 0) -> dt.datetime:
    return NOW - dt.timedelta(days=days, hours=hours)


# --- parsing -----------------------------------------------------------------------------------------

EXAMPLE = {"version": 1, "all": [
    {"field": "company.traits.industry", "op": "eq", "value": "saas"},
    {"field": "company.traits.employees", "op": "between", "value": [50, 500]},
    {"field": "engagement_score", "op": "gt", "value": 40},
    {"magnet_downloaded": "pricing-guide", "within_days": 30},
    {"visited": "/pricing*", "count": {"op": "gte", "value": 3}},
    {"not": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}},
]}


def test_a_valid_filter_round_trips_through_its_canonical_json():
    flt = filter_parse(EXAMPLE)
    assert filter_dump(flt) == {**EXAMPLE, "all": [
        *EXAMPLE["all"][:3], {"within_days": 30, "magnet_downloaded": "pricing-guide"}, *EXAMPLE["all"][4:]]}
    assert filter_parse(filter_dump(flt)) == flt
    assert filter_parse({k: v for k, v in EXAMPLE.items() if k != "version"}) == flt  # version defaults to 1


def _nested(depth: int) -> dict:
    cond: dict = {"consent": "m", "status": "none"}
    for level in range(depth):
        cond = {"not": cond} if level % 2 else {"any": [cond]}
    return cond


DEEP = _nested(11)


@pytest.mark.parametrize("definition,path,words", [
    ([], "", "JSON object"),
    ({"version": 2, "all": [{"consent": "x", "status": "none"}]}, "version", "unsupported filter version 2"),
    ({"version": 1}, "", "needs a condition"),
    ({"all": []}, "all", "at least one condition"),
    ({"any": [{"consent": "m", "status": "none"}, {"nope": 1}]}, "any[1]", "one of the keys"),
    ({"all": [{"field": "shoe_size", "op": "eq", "value": 1}]}, "all[0].field", "unknown field 'shoe_size'"),
    ({"all": [{"field": "traits.", "op": "exists"}]}, "all[0].field", "unknown field"),
    ({"all": [{"field": "traits.7", "op": "exists"}]}, "all[0].field", "not a valid key name"),
    ({"all": [{"field": "latest_touch.colour", "op": "exists"}]}, "all[0].field", "unknown touch key"),
    ({"all": [{"field": "title", "op": "like", "value": "x"}]}, "all[0].op", "unknown operator 'like'"),
    ({"all": [{"field": "title", "op": "gt", "value": 3}]}, "all[0].op", "'gt' does not apply to 'title'"),
    ({"all": [{"field": "created_at", "op": "eq", "value": "2026-01-01"}]}, "all[0].op", "does not apply"),
    ({"all": [{"field": "title", "op": "eq", "value": 3}]}, "all[0].value", "needs non-empty text, not a number"),
    ({"all": [{"field": "title", "op": "eq"}]}, "all[0].value", "not null"),
    ({"all": [{"field": "title", "op": "exists", "value": "x"}]}, "all[0].value", "takes no value"),
    ({"all": [{"field": "fit_score", "op": "gte", "value": "high"}]}, "all[0].value", "needs a number, not text"),
    ({"all": [{"field": "fit_score", "op": "between", "value": [9, 1]}]}, "all[0].value", "low number first"),
    ({"all": [{"field": "traits.x", "op": "in", "value": []}]}, "all[0].value", "non-empty list"),
    ({"all": [{"field": "traits.x", "op": "eq", "value": {"a": 1}}]}, "all[0].value", "not an object"),
    ({"all": [{"field": "created_at", "op": "before", "value": "last week"}]}, "all[0].value", "not an ISO date"),
    ({"all": [{"field": "created_at", "op": "more_than_days_ago", "value": -3}]}, "all[0].value", "number of days"),
    ({"all": [{"field": "created_at", "op": "between", "value": ["2026-02-01", "2026-01-01"]}]},
     "all[0].value", "earlier date first"),
    ({"all": [{"field": "owner", "op": "eq", "value": True}]}, "all[0].value", "user id, a username"),
    ({"not": {"performed": "Signed Up", "within_days": -1}}, "not.within_days", "from 1 to 36500"),
    ({"not": {"performed": "Signed Up", "within_days": "7"}}, "not.within_days", "whole number of days"),
    ({"all": [{"performed": ""}]}, "all[0].performed", "at least 1 character"),
    ({"all": [{"performed": "X", "count": {"op": "gt", "value": 3}}]}, "all[0].count.op", "'gte', 'lte' or 'eq'"),
    ({"all": [{"performed": "X", "count": {"op": "gte", "value": -1}}]}, "all[0].count.value", "greater than"),
    ({"all": [{"performed": "X", "where": [{"field": "plan", "op": "eq", "value": "pro"}]}]},
     "all[0].where[0].field", "properties.NAME"),
    ({"all": [{"performed": "X", "where": [{"field": "properties.plan", "op": "before", "value": "2026-01-01"}]}]},
     "all[0].where[0].op", "does not apply"),
    ({"all": [{"performed": "X", "within_days": 3, "between": ["2026-01-01", "2026-01-02"]}]}, "all[0]",
     "either 'within_days' or 'between'"),
    ({"all": [{"performed": "X", "between": ["2026-01-01"]}]}, "all[0].between[1]", "is required"),
    ({"all": [{"performed": "X", "colour": "red"}]}, "all[0].colour", "unknown key 'colour'"),
    ({"all": [{"first_performed": "X", "op": "gt", "value": 3}]}, "all[0].op", "unknown operator 'gt'"),
    ({"all": [{"last_performed": "X", "op": "after", "value": "soon"}]}, "all[0].value", "not an ISO date"),
    ({"all": [{"visited": "/pricing page"}]}, "all[0].visited", "no spaces"),
    ({"all": [{"magnet_downloaded": 7}]}, "all[0].magnet_downloaded", "valid string"),
    ({"all": [{"consent": "marketing", "status": "maybe"}]}, "all[0].status", "'granted', 'withdrawn' or 'none'"),
    ({"all": [{"consent": "marketing"}]}, "all[0].status", "is required"),
    ({"all": [{"in_segment": "no spaces allowed"}]}, "all[0].in_segment", "should match pattern"),
    (DEEP, "", "nest at most 10 levels"),
])
def test_parse_errors_name_the_bad_part(definition, path, words):
    with pytest.raises(FilterError) as caught:
        filter_parse(definition)
    assert caught.value.path == path
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError)  # a ServiceError: shown to the user as is


def test_segment_references_must_exist_and_never_lead_back(db):
    ws = workspace_create(name="refs")
    Segment.objects.create(workspace=ws, name="A", slug="a", definition={"version": 1, "in_segment": "b"})
    Segment.objects.create(workspace=ws, name="B", slug="b", definition={"version": 1, "in_segment": "c"})
    Segment.objects.create(workspace=ws, name="C", slug="c", kind="static", definition=None)
    other = workspace_create(name="elsewhere")
    Segment.objects.create(workspace=other, name="X", slug="x", kind="static")

    assert filter_segment_refs(filter_parse({"all": [{"in_segment": "a"}, {"not_in_segment": "c"}]})) == {"a", "c"}
    filter_parse({"in_segment": "a"}, workspace_id=ws.id, segment_slug="new")
    with pytest.raises(FilterError) as caught:
        filter_parse({"all": [{"consent": "m", "status": "none"}, {"in_segment": "x"}]}, workspace_id=ws.id)
    assert caught.value.path == "all[1].in_segment" and "no segment 'x' in this workspace" in str(caught.value)
    with pytest.raises(FilterError) as caught:
        filter_parse({"any": [{"not_in_segment": "a"}]}, workspace_id=ws.id, segment_slug="b")
    assert caught.value.path == "any[0].not_in_segment"
    assert "segment 'b' refers back to itself through b → a → b" in str(caught.value)
    with pytest.raises(FilterError, match="refers back to itself"):
        filter_parse({"in_segment": "c"}, workspace_id=ws.id, segment_slug="c")
    # editing C (now dynamic) to point at A would close the loop C → A → B → C
    with pytest.raises(FilterError, match="through c → a → b → c"):
        filter_parse({"in_segment": "a"}, workspace_id=ws.id, segment_slug="c")


def test_what_a_filter_depends_on():
    assert filter_time_sensitive(filter_parse(EXAMPLE)) is True
    assert filter_time_sensitive(filter_parse({"all": [
        {"performed": "X", "between": ["2026-01-01", "2026-02-01"]},
        {"field": "created_at", "op": "before", "value": "2026-01-01"}]})) is False
    assert filter_time_sensitive(filter_parse({"field": "created_at", "op": "more_than_days_ago", "value": 14}))
    assert filter_time_sensitive(filter_parse({"not": {"last_performed": "X", "op": "less_than_days_ago", "value": 3}}))
    assert filter_time_sensitive(filter_parse({"not_performed": "X", "within_days": 3}))
    assert filter_event_names(filter_parse({"field": "fit_score", "op": "gt", "value": 3})) == set()
    assert filter_event_names(filter_parse({"any": [
        {"performed": "Signed Up"}, {"form_submitted": None}, {"not": {"email_clicked": "spring"}},
        {"first_performed": "Trial Started", "op": "before", "value": "2026-01-01"}]})) == {
        "Signed Up", "Form Submitted", "Email Clicked", "Trial Started"}
    assert filter_event_names(filter_parse(EXAMPLE)) is None  # page visits match on the URL, any name


# --- hand-made data ----------------------------------------------------------------------------------

def _event(ws, contact, name, when, *, kind="track", properties=None, context=None) -> Event:
    return Event(workspace=ws, contact=contact, message_id=str(uuid.uuid4()), type=kind, event=name,
                 properties=properties or {}, context=context or {}, timestamp=when, received_at=when, shard=0)


@pytest.fixture
def people(db):
    """Five people in a workspace, and a decoy workspace whose people match everything."""
    ws = workspace_create(name="hand-made")
    alice = user_create(username="alice-owner", password="x" * 12)
    bob = user_create(username="bob-owner", password="x" * 12)
    acme = Company.objects.create(workspace=ws, name="Acme Software", domain="acme.test",
                                  traits={"industry": "SaaS", "employees": 120})
    big = Company.objects.create(workspace=ws, name="BigCorp", domain="bigcorp.com",
                                 traits={"industry": "saas", "employees": "5000"})
    ann = Contact.objects.create(
        workspace=ws, email="ann@acme.test", first_name="Ann", title="VP Marketing", country="DE",
        company=acme, engagement_score=55, fit_score=80, fit_grade="A", lifecycle_stage="mql", owner=alice,
        traits={"plan": "pro", "seats": "25", "beta": True, "tags": ["a"], "address": {"city": "Berlin"}},
        first_touch={"channel": "paid_search", "utm_source": "google", "utm_campaign": "Spring"},
        latest_touch={"channel": "email", "utm_campaign": "retarget"}, source_channel="paid_search",
        created_at=ago(40), first_seen_at=ago(40), last_seen_at=ago(1), conversion_probability=0.7)
    bob_c = Contact.objects.create(
        workspace=ws, email="bob@bigcorp.com", first_name="Bob", title="CTO", country="US", company=big,
        engagement_score=70, fit_score=60, fit_grade="B", lifecycle_stage="customer",
        traits={"plan": "enterprise", "seats": 300}, first_touch={"utm_source": "linkedin"},
        source_channel="paid_social", created_at=ago(400), first_seen_at=ago(400), last_seen_at=ago(20))
    cat = Contact.objects.create(
        workspace=ws, email="cat@shop.example", first_name="Cat", engagement_score=10, lifecycle_stage="lead",
        created_at=ago(3))
    dan = Contact.objects.create(
        workspace=ws, email="dan@acme.test", first_name="Dan", title="Marketing Manager", company=acme,
        engagement_score=45, fit_score=70, lifecycle_stage="sql", traits={"plan": "PRO", "seats": "twenty"},
        owner=bob, created_at=ago(15), first_seen_at=ago(15), last_seen_at=ago(0, hours=2))
    Contact.objects.create(
        workspace=ws, user_id="u-eve", engagement_score=40, traits={"plan": None, "seats": ""},
        created_at=ago(14, hours=-1))
    Event.objects.bulk_create([
        _event(ws, ann, "Asset Downloaded", ago(10), properties={"magnet_slug": "pricing-guide"}),
        *[_event(ws, ann, "Pricing", ago(d), kind="page", properties={"path": "/pricing"},
                 context={"page": {"url": "https://acme.test/pricing?x=1"}}) for d in (1, 2, 3)],
        _event(ws, ann, "Form Submitted", ago(5), properties={"form_slug": "demo"}),
        _event(ws, ann, "Email Delivered", ago(2, hours=1), properties={"campaign": "spring-promo"}),
        _event(ws, ann, "Email Clicked", ago(2), properties={"campaign": "spring-promo"}),
        _event(ws, ann, "Feature Used", ago(50), properties={"feature": "export", "count": 3}),
        _event(ws, ann, "Feature Used", ago(4), properties={"feature": "api", "count": "12"}),
        _event(ws, bob_c, "Asset Downloaded", ago(60), properties={"magnet_slug": "pricing-guide"}),
        *[_event(ws, bob_c, "", ago(d), kind="page", context={"page": {"path": "/Pricing/"}}) for d in range(5)],
        _event(ws, bob_c, "Email Delivered", ago(1), properties={"campaign": "spring-promo"}),
        _event(ws, cat, "", ago(1), kind="page", properties={"url": "https://shop.example/blog/pricing-tips"}),
        _event(ws, cat, "Asset Downloaded", ago(1), properties={"magnet_slug": "ebook"}),
        _event(ws, dan, "Asset Downloaded", ago(29), properties={"magnet_slug": "pricing-guide"}),
        *[_event(ws, dan, "", ago(d), kind="page", properties={"url": "https://acme.test/pricing/"})
          for d in (6, 7, 8)],
        _event(ws, dan, "Feature Used", ago(20), properties={"feature": "export"}),
    ])
    ConsentRecord.objects.bulk_create([
        ConsentRecord(workspace=ws, contact=ann, topic="marketing", status="granted", source="api", at=ago(30)),
        ConsentRecord(workspace=ws, contact=bob_c, topic="marketing", status="granted", source="api", at=ago(30)),
        ConsentRecord(workspace=ws, contact=bob_c, topic="marketing", status="withdrawn", source="api", at=ago(3)),
        ConsentRecord(workspace=ws, contact=dan, topic="marketing", status="granted", source="api", at=ago(9)),
        ConsentRecord(workspace=ws, contact=dan, topic="product", status="withdrawn", source="api", at=ago(9)),
    ])
    vip = Segment.objects.create(workspace=ws, name="VIP", slug="vip", kind="static")
    SegmentMember.objects.create(workspace=ws, segment=vip, contact=dan)
    SegmentMember.objects.create(workspace=ws, segment=vip, contact=ann)

    # The decoy workspace: same slugs, matching data; none of it may leak into `ws`.
    decoy = workspace_create(name="decoy")
    twin = Contact.objects.create(workspace=decoy, email="twin@acme.test", engagement_score=99,
                                  lifecycle_stage="mql", traits={"plan": "pro"}, created_at=ago(40))
    Event.objects.bulk_create([_event(decoy, twin, "Asset Downloaded", ago(1),
                                      properties={"magnet_slug": "pricing-guide"})])
    decoy_vip = Segment.objects.create(workspace=decoy, name="VIP", slug="vip", kind="static")
    SegmentMember.objects.create(workspace=decoy, segment=decoy_vip, contact=twin)
    ConsentRecord.objects.create(workspace=decoy, contact=twin, topic="marketing", status="granted", source="api",
                                 at=ago(1))
    return ws


def matching(ws, definition, *, now=NOW) -> set[str]:
    """Who matches, by email (user id without one), asserting SQL and the evaluator agree."""
    flt = filter_parse(definition, workspace_id=ws.id)
    contacts = Contact.objects.filter(workspace_id=ws.id)
    by_sql = set(contacts.filter(filter_q(flt, workspace_id=ws.id, now=now)).values_list("id", flat=True))
    facts = contact_facts_load(workspace_id=ws.id, contact_ids=contacts.values_list("id", flat=True))
    by_reference = {pk for pk, f in facts.items() if filter_matches(flt, contact_facts=f, now=now)}
    assert by_sql == by_reference, definition
    return {c.email.split("@")[0] or c.user_id for c in Contact.objects.filter(id__in=by_sql)}


EVERYONE = {"ann", "bob", "cat", "dan", "u-eve"}


def test_the_example_from_the_issue(people):
    """SaaS companies with 50-500 employees whose engagement score is over 40, who downloaded a pricing
    guide in the last 30 days, visited the pricing page at least 3 times and are not customers."""
    assert matching(people, EXAMPLE) == {"ann", "dan"}
    # Two days later Dan's download is 31 days old: the window lapses with no new event.
    assert matching(people, EXAMPLE, now=NOW + dt.timedelta(days=2)) == {"ann"}
    # Bob would match on behaviour, but 5000 employees (a numeric string) and being a customer keep him out.
    assert matching(people, {"all": EXAMPLE["all"][2:5]}) == {"ann", "dan"}
    assert matching(people, {"all": [*EXAMPLE["all"][2:3], {"visited": "/pricing*", "count": {
        "op": "gte", "value": 3}}]}) == {"ann", "bob", "dan"}


@pytest.mark.parametrize("condition,expected", [
    # text columns: case-insensitive; a missing value matches only the negative ops
    ({"field": "title", "op": "eq", "value": "cto"}, {"bob"}),
    ({"field": "title", "op": "neq", "value": "cto"}, EVERYONE - {"bob"}),
    ({"field": "title", "op": "contains", "value": "MARKETING"}, {"ann", "dan"}),
    ({"field": "title", "op": "not_contains", "value": "marketing"}, {"bob", "cat", "u-eve"}),
    ({"field": "title", "op": "starts_with", "value": "vp "}, {"ann"}),
    ({"field": "title", "op": "exists"}, {"ann", "bob", "dan"}),
    ({"field": "title", "op": "not_exists"}, {"cat", "u-eve"}),
    ({"field": "country", "op": "in", "value": ["de", "FR"]}, {"ann"}),
    ({"field": "country", "op": "not_in", "value": ["de", "FR"]}, EVERYONE - {"ann"}),
    ({"field": "email", "op": "contains", "value": "@acme.test"}, {"ann", "dan"}),
    ({"field": "email", "op": "contains", "value": "%"}, set()),  # LIKE wildcards are literal
    ({"field": "email", "op": "starts_with", "value": "_"}, set()),
    ({"field": "user_id", "op": "eq", "value": "U-EVE"}, {"u-eve"}),
    # company fields
    ({"field": "company.name", "op": "starts_with", "value": "acme"}, {"ann", "dan"}),
    ({"field": "company.name", "op": "neq", "value": "acme software"}, {"bob", "cat", "u-eve"}),
    ({"field": "company.domain", "op": "in", "value": ["BIGCORP.com"]}, {"bob"}),
    ({"field": "company.traits.industry", "op": "eq", "value": "SAAS"}, {"ann", "bob", "dan"}),
    ({"field": "company.traits.employees", "op": "gte", "value": 1000}, {"bob"}),
    ({"field": "company.traits.employees", "op": "eq", "value": "120"}, {"ann", "dan"}),
    ({"field": "company.traits.employees", "op": "not_exists"}, {"cat", "u-eve"}),
    # JSON traits: types kept, numeric strings compare as numbers
    ({"field": "traits.plan", "op": "eq", "value": "pro"}, {"ann", "dan"}),
    ({"field": "traits.plan", "op": "exists"}, {"ann", "bob", "dan"}),
    ({"field": "traits.plan", "op": "not_exists"}, {"cat", "u-eve"}),
    ({"field": "traits.plan", "op": "in", "value": ["Enterprise", 3, True]}, {"bob"}),
    ({"field": "traits.seats", "op": "gt", "value": 20}, {"ann", "bob"}),
    ({"field": "traits.seats", "op": "lt", "value": 100}, {"ann"}),
    ({"field": "traits.seats", "op": "between", "value": [25, 300]}, {"ann", "bob"}),
    ({"field": "traits.seats", "op": "eq", "value": 25.0}, {"ann"}),
    ({"field": "traits.seats", "op": "eq", "value": "twenty"}, {"dan"}),
    ({"field": "traits.seats", "op": "exists"}, {"ann", "bob", "dan"}),  # "" is missing
    ({"field": "traits.seats", "op": "contains", "value": "2"}, {"ann"}),  # text ops see strings only
    ({"field": "traits.beta", "op": "eq", "value": True}, {"ann"}),
    ({"field": "traits.beta", "op": "neq", "value": True}, EVERYONE - {"ann"}),
    ({"field": "traits.beta", "op": "eq", "value": "true"}, set()),
    ({"field": "traits.tags", "op": "exists"}, {"ann"}),
    ({"field": "traits.tags", "op": "eq", "value": "a"}, set()),  # arrays exist but compare to nothing
    ({"field": "traits.tags", "op": "contains", "value": "A"}, {"ann"}),  # a list contains its elements
    ({"field": "traits.tags", "op": "contains", "value": "b"}, set()),
    ({"field": "traits.tags", "op": "not_contains", "value": "a"}, EVERYONE - {"ann"}),
    ({"field": "traits.address.city", "op": "eq", "value": "berlin"}, {"ann"}),
    # scores, grade, stage, probability
    ({"field": "engagement_score", "op": "gt", "value": 40}, {"ann", "bob", "dan"}),
    ({"field": "engagement_score", "op": "gte", "value": 40}, {"ann", "bob", "dan", "u-eve"}),
    ({"field": "engagement_score", "op": "between", "value": [10, 45]}, {"cat", "dan", "u-eve"}),
    ({"field": "fit_score", "op": "eq", "value": 80}, {"ann"}),
    ({"field": "fit_score", "op": "eq", "value": 79.5}, set()),
    ({"field": "fit_score", "op": "in", "value": [60, 70]}, {"bob", "dan"}),
    ({"field": "fit_score", "op": "lte", "value": 0}, {"cat", "u-eve"}),
    ({"field": "fit_grade", "op": "in", "value": ["a", "b"]}, {"ann", "bob"}),
    ({"field": "conversion_probability", "op": "gt", "value": 0.5}, {"ann"}),
    ({"field": "conversion_probability", "op": "neq", "value": 0.7}, EVERYONE - {"ann"}),
    ({"field": "conversion_probability", "op": "not_exists"}, EVERYONE - {"ann"}),
    ({"field": "lifecycle_stage", "op": "neq", "value": "customer"}, EVERYONE - {"bob"}),
    # owner: id, username or "none"
    ({"field": "owner", "op": "eq", "value": "alice-owner"}, {"ann"}),
    ({"field": "owner", "op": "neq", "value": "alice-owner"}, EVERYONE - {"ann"}),
    ({"field": "owner", "op": "eq", "value": "none"}, {"bob", "cat", "u-eve"}),
    ({"field": "owner", "op": "in", "value": ["bob-owner", "nobody"]}, {"dan"}),
    ({"field": "owner", "op": "exists"}, {"ann", "dan"}),
    # source and UTM (first touch unless latest_touch. is said)
    ({"field": "source_channel", "op": "eq", "value": "PAID_SEARCH"}, {"ann"}),
    ({"field": "utm_source", "op": "in", "value": ["google", "linkedin"]}, {"ann", "bob"}),
    ({"field": "utm_campaign", "op": "eq", "value": "spring"}, {"ann"}),
    ({"field": "latest_touch.utm_campaign", "op": "eq", "value": "spring"}, set()),
    ({"field": "latest_touch.utm_campaign", "op": "starts_with", "value": "RE"}, {"ann"}),
    ({"field": "first_touch.channel", "op": "not_exists"}, EVERYONE - {"ann"}),
    # dates: absolute (a date is the whole day) and relative
    ({"field": "created_at", "op": "more_than_days_ago", "value": 14}, {"ann", "bob", "dan"}),
    ({"field": "created_at", "op": "less_than_days_ago", "value": 14}, {"cat", "u-eve"}),
    ({"field": "created_at", "op": "before", "value": "2026-01-01"}, {"bob"}),
    ({"field": "created_at", "op": "after", "value": "2026-02-14"}, {"cat", "dan", "u-eve"}),
    ({"field": "created_at", "op": "after", "value": "2026-02-15"}, {"cat", "u-eve"}),  # the whole day
    ({"field": "created_at", "op": "after", "value": "2026-02-15T09:00:00Z"}, {"cat", "u-eve"}),
    ({"field": "created_at", "op": "between", "value": ["2026-01-21", "2026-02-15"]}, {"ann", "dan"}),
    ({"field": "created_at", "op": "between", "value": ["2026-01-21T09:00:00Z", "2026-02-15T09:00:00Z"]},
     {"ann", "dan"}),
    ({"field": "first_seen_at", "op": "not_exists"}, {"cat", "u-eve"}),
    ({"field": "last_seen_at", "op": "less_than_days_ago", "value": 0.5}, {"dan"}),
    # behaviour
    ({"performed": "Feature Used"}, {"ann", "dan"}),
    ({"performed": "feature used"}, set()),  # event names are exact
    ({"performed": "Feature Used", "within_days": 10}, {"ann"}),
    ({"performed": "Feature Used", "count": {"op": "eq", "value": 2}}, {"ann"}),
    ({"performed": "Feature Used", "count": {"op": "lte", "value": 1}}, {"bob", "cat", "dan", "u-eve"}),
    ({"performed": "Feature Used", "count": {"op": "gte", "value": 0}}, EVERYONE),
    ({"performed": "Feature Used", "where": [{"field": "properties.feature", "op": "eq", "value": "EXPORT"}]},
     {"ann", "dan"}),
    ({"performed": "Feature Used", "where": [{"field": "properties.count", "op": "gt", "value": 5}]}, {"ann"}),
    ({"performed": "Feature Used", "where": [{"field": "properties.count", "op": "not_exists"}]}, {"dan"}),
    ({"performed": "Feature Used", "between": ["2026-01-01", "2026-01-10"]}, set()),
    ({"performed": "Feature Used", "between": ["2026-01-01", "2026-01-11"]}, {"ann"}),  # the whole last day
    ({"performed": "Feature Used", "between": ["2026-02-10T09:00:00Z", "2026-02-10T09:00:00Z"]}, {"dan"}),
    ({"not_performed": "Feature Used", "within_days": 10}, {"bob", "cat", "dan", "u-eve"}),
    ({"not_performed": "Feature Used"}, {"bob", "cat", "u-eve"}),
    ({"first_performed": "Feature Used", "op": "more_than_days_ago", "value": 30}, {"ann"}),
    ({"first_performed": "Feature Used", "op": "less_than_days_ago", "value": 30}, {"dan"}),
    ({"last_performed": "Feature Used", "op": "more_than_days_ago", "value": 10}, {"dan"}),
    ({"last_performed": "Feature Used", "op": "less_than_days_ago", "value": 10}, {"ann"}),
    ({"last_performed": "Feature Used", "op": "after", "value": "2026-02-09"}, {"ann", "dan"}),
    ({"last_performed": "Feature Used", "op": "before", "value": "2026-02-10"}, set()),
    ({"first_performed": "Feature Used", "op": "between", "value": ["2026-01-01", "2026-01-11"]}, {"ann"}),
    ({"first_performed": "Feature Used", "op": "after", "value": "2026-01-11T09:00:00Z"}, {"dan"}),
    ({"not": {"first_performed": "Feature Used", "op": "before", "value": "2030-01-01"}}, {"bob", "cat", "u-eve"}),
    # page visits: a glob on the path, in properties or context, full URL or path, any case
    ({"visited": "/pricing"}, {"ann", "bob", "dan"}),
    ({"visited": "/pricing", "count": {"op": "gte", "value": 4}}, {"bob"}),
    ({"visited": "/pricing", "within_days": 3}, {"ann", "bob"}),
    ({"visited": "*pricing*"}, {"ann", "bob", "cat", "dan"}),
    ({"visited": "/blog/*"}, {"cat"}),
    ({"visited": "/pric"}, set()),
    ({"visited": "https://acme.test/*"}, {"ann", "dan"}),
    # shortcuts
    ({"magnet_downloaded": "pricing-guide"}, {"ann", "bob", "dan"}),
    ({"magnet_downloaded": "pricing-guide", "within_days": 30}, {"ann", "dan"}),
    ({"magnet_downloaded": None, "within_days": 7}, {"cat"}),
    ({"form_submitted": "demo"}, {"ann"}),
    ({"form_submitted": None, "count": {"op": "eq", "value": 0}}, {"bob", "cat", "dan", "u-eve"}),
    ({"email_clicked": "spring-promo"}, {"ann"}),
    ({"email_received": "Spring-Promo"}, {"ann", "bob"}),
    ({"email_received": None, "within_days": 1}, {"bob"}),
    ({"consent": "marketing", "status": "granted"}, {"ann", "dan"}),
    ({"consent": "marketing", "status": "withdrawn"}, {"bob"}),
    ({"consent": "marketing", "status": "none"}, {"cat", "u-eve"}),
    ({"consent": "product", "status": "none"}, EVERYONE - {"dan"}),
    ({"in_segment": "vip"}, {"ann", "dan"}),
    ({"not_in_segment": "vip"}, {"bob", "cat", "u-eve"}),
    # groups
    ({"any": [{"in_segment": "vip"}, {"field": "title", "op": "eq", "value": "cto"}]}, {"ann", "bob", "dan"}),
    ({"not": {"any": [{"in_segment": "vip"}, {"field": "title", "op": "eq", "value": "cto"}]}}, {"cat", "u-eve"}),
    ({"all": [{"in_segment": "vip"}, {"not": {"field": "traits.seats", "op": "gte", "value": 20}}]}, {"dan"}),
])
def test_each_condition_on_hand_made_data(people, condition, expected):
    assert matching(people, {"version": 1, **condition}) == expected


def test_boundaries_are_exact(db):
    """Events exactly on a bound: windows include their start, relative ops are strict, a date is the
    whole day (UTC)."""
    ws = workspace_create(name="bounds")
    midnight = dt.datetime(2026, 3, 1, tzinfo=UTC)
    on_day = Contact.objects.create(workspace=ws, email="midnight@x.test", created_at=midnight)
    before = Contact.objects.create(workspace=ws, email="before@x.test", created_at=midnight - dt.timedelta(seconds=1))
    Event.objects.bulk_create([_event(ws, on_day, "Signed Up", midnight), _event(ws, on_day, "Paid", ago(30)),
                               _event(ws, before, "Signed Up", midnight - dt.timedelta(seconds=1))])
    cases = [
        ({"first_performed": "Signed Up", "op": "after", "value": "2026-02-28"}, {"midnight"}),
        ({"first_performed": "Signed Up", "op": "before", "value": "2026-03-01"}, {"before"}),
        ({"last_performed": "Signed Up", "op": "after", "value": "2026-02-28"}, {"midnight"}),
        ({"last_performed": "Signed Up", "op": "before", "value": "2026-03-01"}, {"before"}),
        ({"first_performed": "Signed Up", "op": "between", "value": ["2026-03-01", "2026-03-01"]}, {"midnight"}),
        ({"last_performed": "Signed Up", "op": "between", "value": ["2026-02-28", "2026-02-28"]}, {"before"}),
        ({"first_performed": "Signed Up", "op": "after", "value": "2026-03-01T00:00:00Z"}, set()),
        ({"last_performed": "Signed Up", "op": "between", "value": ["2026-03-01T00:00:00Z",
                                                                    "2026-03-01T00:00:00Z"]}, {"midnight"}),
        ({"performed": "Paid", "within_days": 30}, {"midnight"}),
        ({"performed": "Paid", "within_days": 29}, set()),
        ({"last_performed": "Paid", "op": "less_than_days_ago", "value": 30}, set()),
        ({"last_performed": "Paid", "op": "more_than_days_ago", "value": 30}, set()),
        ({"first_performed": "Paid", "op": "less_than_days_ago", "value": 30.001}, {"midnight"}),
        ({"field": "created_at", "op": "after", "value": "2026-02-28"}, {"midnight"}),
        ({"field": "created_at", "op": "less_than_days_ago", "value": 1.375}, set()),  # exactly 1 d 9 h ago
        ({"field": "created_at", "op": "more_than_days_ago", "value": 1.375}, {"before"}),
    ]
    for condition, expected in cases:
        assert matching(ws, condition) == expected, condition


def test_preview_counts_and_samples_an_unsaved_filter(people):
    with clock_module.use(clock_module.FrozenClock(NOW)):
        result = segment_preview(workspace=people, definition=EXAMPLE, limit=1)
    assert result["count"] == 2
    assert result["sample"] == [{"id": Contact.objects.get(email="dan@acme.test").id, "email": "dan@acme.test",
                                 "name": "Dan", "company": "Acme Software"}]
    assert result["sql_ms"] >= 0
    with pytest.raises(FilterError, match="no segment 'gone'"):
        segment_preview(workspace=people, definition={"in_segment": "gone"})


def test_preview_over_its_budget_estimates_from_a_sample(people, monkeypatch):
    from leadflow.segments import preview as preview_module

    with clock_module.use(clock_module.FrozenClock(NOW)):
        exact = segment_preview(workspace=people, definition={"field": "email", "op": "exists"})
        assert exact["estimated"] is False
        # Over budget (a zero budget estimates at once) with every contact sampled: the estimate is exact.
        full = segment_preview(workspace=people, definition={"field": "email", "op": "exists"}, budget_seconds=0)
        assert full["estimated"] is True and full["count"] == exact["count"]
        assert full["sampled"] == Contact.objects.filter(workspace=people).count()
        assert full["count_low"] <= full["count"] <= full["count_high"]
        # A sample of half the contacts (by hashed id): the count is scaled up from the sampled matches.
        monkeypatch.setattr(preview_module, "SAMPLE_TARGET", 2)
        total = Contact.objects.filter(workspace=people).count()
        step = max(1, total // 2)
        in_sample = [c for c in Contact.objects.filter(workspace=people)
                     if (c.pk % 2_147_483_647) * 1_327_217_885 % 2_147_483_647 % step == 0]
        hits = sum(1 for c in in_sample if c.email)
        estimate = segment_preview(workspace=people, definition={"field": "email", "op": "exists"},
                                   budget_seconds=0)
        assert estimate["sampled"] == len(in_sample)
        assert estimate["count"] == round(hits / len(in_sample) * total)
        assert {row["id"] for row in estimate["sample"]} <= {c.pk for c in in_sample}


def _hashed_bucket(pk: int, step: int) -> int:
    return (pk % 2_147_483_647) * 1_327_217_885 % 2_147_483_647 % step


def _wilson_bounds(hits: int, n: int) -> tuple[float, float]:
    z = 1.96
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def test_preview_estimate_decides_each_sampled_contact_and_brackets_the_exact_count(db, monkeypatch):
    """The estimate path with a behavioural filter: every sampled contact is decided (profile and
    event conditions), the count is the sampled share scaled to the workspace, the 95% interval
    is Wilson's around it and holds the exact count, and the sample rows are the newest sampled
    matches."""
    from leadflow.segments import preview as preview_module

    ws = workspace_create(name="estimate")
    contacts = Contact.objects.bulk_create([Contact(workspace=ws, email=f"p{i}@x.test", engagement_score=i % 50)
                                            for i in range(240)])
    Event.objects.bulk_create(
        [_event(ws, c, "Asset Downloaded", ago(days=i % 45), properties={"magnet_slug": "pricing-guide"})
         for i, c in enumerate(contacts) if i % 2 == 0]
        + [_event(ws, c, "Asset Downloaded", ago(days=1), properties={"magnet_slug": "ebook"})
           for i, c in enumerate(contacts) if i % 2 == 1])
    definition = {"all": [{"field": "engagement_score", "op": "gt", "value": 10},
                          {"magnet_downloaded": "pricing-guide", "within_days": 30}]}
    matching = {c.pk for i, c in enumerate(contacts) if i % 50 > 10 and i % 2 == 0 and i % 45 <= 30}
    monkeypatch.setattr(preview_module, "SAMPLE_TARGET", 60)  # every 4th contact, by hashed id
    with clock_module.use(clock_module.FrozenClock(NOW)):
        exact = segment_preview(workspace=ws, definition=definition)
        estimate = segment_preview(workspace=ws, definition=definition, limit=3, budget_seconds=0)
        empty = segment_preview(workspace=ws, definition=definition, limit=0, budget_seconds=0)
    assert exact == {**exact, "count": len(matching), "estimated": False}
    sampled = [c.pk for c in contacts if _hashed_bucket(c.pk, 4) == 0]
    hits = sorted((pk for pk in sampled if pk in matching), reverse=True)
    assert 0 < len(hits) < len(sampled) < len(contacts)
    low, high = _wilson_bounds(len(hits), len(sampled))
    assert {k: estimate[k] for k in ("estimated", "sampled", "count", "count_low", "count_high")} == {
        "estimated": True, "sampled": len(sampled), "count": round(len(hits) / len(sampled) * 240),
        "count_low": math.floor(low * 240), "count_high": math.ceil(high * 240)}
    assert estimate["count_low"] <= exact["count"] <= estimate["count_high"]
    assert [row["id"] for row in estimate["sample"]] == hits[:3]
    assert estimate["sample"][0]["email"] == Contact.objects.get(pk=hits[0]).email
    assert empty["sample"] == [] and empty["count"] == estimate["count"]


def test_preview_time_limit_cancels_a_long_query(db):
    from django.db import connection

    from leadflow.segments.preview import _OverBudget, _time_limit

    slow = ("SELECT pg_sleep(30)" if connection.vendor == "postgresql" else
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) "
            "SELECT COUNT(*) FROM n")
    with pytest.raises(_OverBudget):
        with _time_limit(0.05):
            with connection.cursor() as cursor:
                cursor.execute(slow)
    with connection.cursor() as cursor:  # the connection is still usable afterwards
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
        if connection.vendor == "postgresql":
            cursor.execute("SHOW statement_timeout")
            before = cursor.fetchone()[0]
    with _time_limit(5):  # a query that finishes leaves no timeout behind
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == before


def test_user_input_never_becomes_sql(people):
    hostile = "x'); DROP TABLE contacts_contact; --"
    for condition in ({"field": "title", "op": "eq", "value": hostile},
                      {"field": "traits.plan", "op": "contains", "value": hostile},
                      {"performed": hostile, "where": [{"field": "properties.a", "op": "in", "value": [hostile]}]},
                      {"visited": "/x');DROP*"}, {"consent": hostile, "status": "granted"}):
        assert matching(people, condition) == set()
    assert matching(people, {"field": "traits.plan", "op": "not_in", "value": [hostile, '"]']}) == EVERYONE


# --- property tests: SQL == the reference evaluator ------------------------------------------------

TEXTS = ["saas", "SaaS", "retail", "Re%tail", "a_b", "pro", "PRO", "250", "25.0", "-3", "1e3", "0",
         "x\\y", "berlin", "Spring"]
NUMBERS = [-3, 0, 1, 25, 25.5, 40, 50, 250, 500, 1000]
EVENT_NAMES = ["Asset Downloaded", "Email Clicked", "Signed Up"]
SLUGS = ["pricing-guide", "ebook", "demo", "spring"]
PATHS = ["/pricing", "/Pricing/", "/pricing?plan=pro", "/blog/pricing", "/blog/a", "/", "https://a.test/pricing",
         "https://a.test/blog/x#top", "http://a.test"]
DAY_OFFSETS = [-1, 0, 0.5, 1, 3, 14, 29, 30, 31, 400]
DAYS = [0, 1, 3, 14, 30, 0.5]
DATES = ["2026-01-01", "2026-02-01", "2026-02-15", "2026-03-01", "2026-03-02", "2026-02-01T09:00:00Z",
         "2026-02-16T09:00:00Z", "2026-03-01T21:00:00+00:00", "2026-03-02T09:00:00Z"]
SEGMENT_SLUGS = ["alpha", "beta"]
USERNAMES = ["prop-owner-1", "prop-owner-2"]

json_scalar = st.one_of(st.none(), st.booleans(), st.sampled_from(NUMBERS), st.sampled_from(TEXTS + [""]))
json_value = st.one_of(json_scalar, st.lists(json_scalar, max_size=2), st.fixed_dictionaries({"city": json_scalar}))
json_object = st.dictionaries(st.sampled_from(["employees", "plan", "seats", "address"]), json_value, max_size=4)
when = st.builds(lambda d, h: NOW - dt.timedelta(days=d, hours=h), st.sampled_from(DAY_OFFSETS),
                 st.sampled_from([0, 0, 9, 12]))  # 9 hours before NOW is midnight
touch = st.dictionaries(st.sampled_from(["channel", "utm_source", "utm_campaign"]), st.sampled_from(TEXTS + [""]),
                        max_size=3)

contact_row = st.fixed_dictionaries({
    "email": st.sampled_from(["", "ann@a.test", "BOB@b.test", "c_d@x.test", "e%f@x.test"]),
    "title": st.sampled_from(["", "CTO", "VP Marketing", "marketing manager", "Re%tail lead"]),
    "country": st.sampled_from(["", "DE", "us"]),
    "lifecycle_stage": st.sampled_from(["", "lead", "mql", "customer"]),
    "fit_grade": st.sampled_from(["", "A", "b"]),
    "source_channel": st.sampled_from(["", "paid_search", "organic"]),
    "fit_score": st.sampled_from([0, 25, 40, 50, 100]),
    "engagement_score": st.sampled_from([0.0, 10.5, 25.0, 40.0, 55.25]),
    "conversion_probability": st.sampled_from([None, 0.1, 0.5]),
    "created_at": when,
    "first_seen_at": st.one_of(st.none(), when),
    "traits": json_object,
    "first_touch": touch,
    "latest_touch": touch,
    "company": st.sampled_from([None, 0, 1, 2]),
    "owner": st.sampled_from([None, 0, 1]),
})
company_row = st.fixed_dictionaries({"name": st.sampled_from(["", "Acme", "acme inc", "Big_Corp"]),
                                     "domain": st.sampled_from(["", "acme.test", "big.test"]),
                                     "traits": json_object})
event_row = st.fixed_dictionaries({
    "contact": st.integers(0, 5),
    "kind": st.sampled_from(["track", "track", "page"]),
    "name": st.sampled_from(EVENT_NAMES + ["", "Pricing"]),
    "properties": st.dictionaries(st.sampled_from(["magnet_slug", "form_slug", "campaign", "plan", "path", "url"]),
                                  st.one_of(st.sampled_from(SLUGS + PATHS), json_scalar), max_size=3),
    "context": st.one_of(st.just({}), st.fixed_dictionaries({"page": st.dictionaries(
        st.sampled_from(["url", "path"]), st.sampled_from(PATHS), max_size=2)})),
    "at": when,
})
consent_row = st.fixed_dictionaries({"contact": st.integers(0, 7), "topic": st.sampled_from(["marketing", "product"]),
                                     "status": st.sampled_from(["granted", "withdrawn"]),
                                     "at": st.sampled_from([ago(1), ago(3), ago(3), ago(40)])})
dataset = st.fixed_dictionaries({
    "contacts": st.lists(contact_row, min_size=1, max_size=6),
    "companies": st.lists(company_row, min_size=3, max_size=3),
    "events": st.lists(event_row, max_size=40),
    "consents": st.lists(consent_row, max_size=8),
    "members": st.lists(st.tuples(st.sampled_from(SEGMENT_SLUGS), st.integers(0, 7)), max_size=6),
})

# --- random filters over the real language ---


def _value_for(kind: str, op: str):
    if op in ("exists", "not_exists"):
        return st.none()
    if kind == "date":
        if op in ("before", "after"):
            return st.sampled_from(DATES)
        if op == "between":
            return st.lists(st.sampled_from(DATES), min_size=2, max_size=2).map(
                lambda pair: sorted(pair, key=lambda d: (d[:10], len(d) > 10, d)))
        return st.sampled_from(DAYS)
    if kind == "owner":
        one = st.sampled_from(USERNAMES + ["none", "nobody"])
    elif kind == "text" or op in ("contains", "not_contains", "starts_with"):
        one = st.sampled_from([t for t in TEXTS + ["cto", "marketing", "ACME", "a.test", "%", "_"] if t])
    elif kind == "number" or op in ("gt", "gte", "lt", "lte", "between"):
        one = st.sampled_from(NUMBERS)
    else:
        one = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(TEXTS), st.booleans())
    if op in ("in", "not_in"):
        return st.lists(one, min_size=1, max_size=3)
    if op == "between":
        return st.lists(st.sampled_from(NUMBERS), min_size=2, max_size=2).map(sorted)
    return one


FIELDS = {
    "text": ["email", "title", "country", "lifecycle_stage", "fit_grade", "source_channel", "company.name",
             "company.domain"],
    "number": ["fit_score", "engagement_score", "conversion_probability"],
    "date": ["created_at", "first_seen_at"],
    "owner": ["owner"],
    "json": ["traits.plan", "traits.seats", "traits.address.city", "company.traits.employees", "utm_source",
             "latest_touch.utm_campaign"],
}
OPS = {
    "text": ["eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in", "exists", "not_exists"],
    "number": ["eq", "neq", "gt", "gte", "lt", "lte", "between", "in", "not_in", "exists", "not_exists"],
    "date": ["before", "after", "between", "more_than_days_ago", "less_than_days_ago", "exists", "not_exists"],
    "owner": ["eq", "neq", "in", "not_in", "exists", "not_exists"],
    "json": ["eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in", "exists", "not_exists",
             "gt", "gte", "lt", "lte", "between"],
}


@st.composite
def field_condition(draw, kinds=tuple(FIELDS)):
    kind = draw(st.sampled_from(kinds))
    field = draw(st.sampled_from(FIELDS[kind]))
    op = draw(st.sampled_from(OPS[kind]))
    cond = {"field": field, "op": op}
    value = draw(_value_for(kind, op))
    if value is not None:
        cond["value"] = value
    return cond


@st.composite
def property_condition(draw):
    cond = draw(field_condition(kinds=("json",)))
    cond["field"] = "properties." + draw(st.sampled_from(["magnet_slug", "plan", "campaign"]))
    return cond


counts = st.one_of(st.none(), st.fixed_dictionaries({"op": st.sampled_from(["gte", "lte", "eq"]),
                                                      "value": st.integers(0, 3)}))


@st.composite
def window(draw):
    choice = draw(st.sampled_from(["ever", "days", "between"]))
    if choice == "days":
        return {"within_days": draw(st.sampled_from([1, 3, 14, 30]))}
    if choice == "between":
        return {"between": draw(_value_for("date", "between"))}
    return {}


@st.composite
def behaviour(draw):
    kind = draw(st.sampled_from(["performed", "not_performed", "first_performed", "last_performed", "visited",
                                 "magnet_downloaded", "form_submitted", "email_clicked", "email_received"]))
    if kind in ("performed", "not_performed"):
        cond = {kind: draw(st.sampled_from(EVENT_NAMES)), **draw(window())}
        where = draw(st.lists(property_condition(), max_size=2))
        if where:
            cond["where"] = where
        if kind == "performed" and (count := draw(counts)) is not None:
            cond["count"] = count
        return cond
    if kind in ("first_performed", "last_performed"):
        op = draw(st.sampled_from(["before", "after", "between", "more_than_days_ago", "less_than_days_ago"]))
        return {kind: draw(st.sampled_from(EVENT_NAMES)), "op": op, "value": draw(_value_for("date", op))}
    if kind == "visited":
        cond = {"visited": draw(st.sampled_from(["/pricing", "/pricing*", "*pricing*", "/blog/*", "/PRICING/",
                                                 "https://a.test/*", "/"])), **draw(window())}
    else:
        cond = {kind: draw(st.one_of(st.none(), st.sampled_from(SLUGS))), **draw(window())}
    if (count := draw(counts)) is not None:
        cond["count"] = count
    return cond


leaf = st.one_of(
    field_condition(),
    behaviour(),
    st.fixed_dictionaries({"consent": st.sampled_from(["marketing", "product"]),
                           "status": st.sampled_from(["granted", "withdrawn", "none"])}),
    st.sampled_from(SEGMENT_SLUGS).map(lambda s: {"in_segment": s}),
    st.sampled_from(SEGMENT_SLUGS).map(lambda s: {"not_in_segment": s}),
)
conditions = st.recursive(
    leaf,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c}),
    ),
    max_leaves=6,
)
filters = conditions.map(lambda c: {"version": 1, **c})


def _build(data: dict, users: list) -> int:
    """Create a fresh workspace holding `data`; returns its id."""
    ws = workspace_create(name=f"prop {uuid.uuid4()}")
    companies = Company.objects.bulk_create([Company(workspace=ws, **row) for row in data["companies"]])
    contacts = Contact.objects.bulk_create([
        Contact(workspace=ws, **{k: v for k, v in row.items() if k not in ("company", "owner")},
                company=companies[row["company"]] if row["company"] is not None else None,
                owner=users[row["owner"]] if row["owner"] is not None else None)
        for row in data["contacts"]])
    if not contacts:
        return ws.id
    Event.objects.bulk_create([
        _event(ws, contacts[row["contact"] % len(contacts)], row["name"] if row["kind"] == "track" else "",
               row["at"], kind=row["kind"], properties=row["properties"], context=row["context"])
        for row in data["events"]])
    ConsentRecord.objects.bulk_create([
        ConsentRecord(workspace=ws, contact=contacts[row["contact"] % len(contacts)], topic=row["topic"],
                      status=row["status"], source="test", at=row["at"]) for row in data["consents"]])
    segments = {slug: Segment.objects.create(workspace=ws, name=slug, slug=slug, kind="static")
                for slug in SEGMENT_SLUGS}
    members = {(slug, contacts[i % len(contacts)].id) for slug, i in data["members"]}
    SegmentMember.objects.bulk_create([SegmentMember(workspace=ws, segment=segments[slug], contact_id=cid)
                                       for slug, cid in members])
    return ws.id


def _nest(leaves):
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"any": c}),
        children.map(lambda c: {"not": c}),
    ), max_leaves=4).map(lambda c: {"version": 1, **c})


COMPANY_TEXTS = {"company.name": ["Acme", "acme", "ACME INC", "Big_Corp", "inc", "a"],
                 "company.domain": ["acme.test", "big.test", "test", "ACME"]}


@st.composite
def company_condition(draw):
    """A company field condition whose value the generated companies often have."""
    field = draw(st.sampled_from([*COMPANY_TEXTS, "company.traits.employees", "company.traits.plan"]))
    kind = "json" if field.startswith("company.traits.") else "text"
    op = draw(st.sampled_from(OPS[kind]))
    cond = {"field": field, "op": op}
    if op in ("exists", "not_exists"):
        return cond
    if kind == "text":
        one = st.sampled_from(COMPANY_TEXTS[field])
        cond["value"] = draw(st.lists(one, min_size=1, max_size=2) if op in ("in", "not_in") else one)
    else:
        cond["value"] = draw(_value_for(kind, op))
    return cond


# The whole language mixed, and focused mixes that hit each family's corners far more often
# ("company": several company conditions in one group, which compile to one EXISTS).
FILTER_MIXES = {
    "mixed": filters,
    "fields": _nest(field_condition()),
    "behaviour": _nest(st.one_of(behaviour(), leaf)),
    "company": _nest(st.one_of(company_condition(), company_condition(), leaf)),
}
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


def _agree(first, second, data, mix: str):
    users = [_user(u) if _user_exists(u) else user_create(username=u, password="x" * 12) for u in USERNAMES]
    workspaces = [_build(first, users), _build(second, users)]
    with clock_module.use(clock_module.FrozenClock(NOW)):
        for _ in range(8):
            definition = data.draw(FILTER_MIXES[mix], label="filter")
            try:
                flt = filter_parse(definition)
            except FilterError as exc:  # the strategy builds valid filters only
                raise AssertionError(f"strategy produced an invalid filter: {exc}") from None
            for ws_id in workspaces:
                contacts = Contact.objects.filter(workspace_id=ws_id)
                by_sql = set(contacts.filter(filter_q(flt, workspace_id=ws_id, now=NOW)).values_list("id", flat=True))
                facts = contact_facts_load(workspace_id=ws_id, contact_ids=contacts.values_list("id", flat=True))
                by_reference = {pk for pk, f in facts.items() if filter_matches(flt, contact_facts=f, now=NOW)}
                assert by_sql == by_reference, definition


@PROPERTY_SETTINGS
@given(first=dataset, second=dataset, data=st.data())
def test_sql_agrees_with_the_reference_evaluator(db, first, second, data):
    _agree(first, second, data, "mixed")


@PROPERTY_SETTINGS
@given(first=dataset, second=dataset, data=st.data())
def test_sql_agrees_with_the_reference_evaluator_on_fields(db, first, second, data):
    _agree(first, second, data, "fields")


@PROPERTY_SETTINGS
@given(first=dataset, second=dataset, data=st.data())
def test_sql_agrees_with_the_reference_evaluator_on_behaviour(db, first, second, data):
    _agree(first, second, data, "behaviour")


@PROPERTY_SETTINGS
@given(first=dataset, second=dataset, data=st.data())
def test_sql_agrees_with_the_reference_evaluator_on_company_fields(db, first, second, data):
    _agree(first, second, data, "company")


def _user_exists(username: str) -> bool:
    from django.contrib.auth import get_user_model

    return get_user_model().objects.filter(username=username).exists()


def _user(username: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=username)


@settings(max_examples=200, deadline=None)
@given(filters)
def test_random_filters_survive_their_canonical_json(definition):
    flt = filter_parse(definition)
    assert filter_parse(filter_dump(flt)) == flt
    assert filter_event_names(flt) is None or isinstance(filter_event_names(flt), set)
    assert isinstance(filter_time_sensitive(flt), bool)
