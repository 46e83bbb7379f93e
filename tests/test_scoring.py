"""Scoring: the rule language and maths as plain functions, then the stage, decay, merges, API and UI."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from conftest import post_batch

from leadflow.contacts.models import Contact, Identity
from leadflow.core import clock as clock_module
from leadflow.core.pipeline import timers_run
from leadflow.core.services import ServiceError, user_create
from leadflow.scoring import conditions, engine, selectors, services
from leadflow.scoring.conditions import ConditionError, condition_validate
from leadflow.scoring.decay import decay_run
from leadflow.scoring.models import ScoreEntry, ScoringRule, ScoringSettings

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


# The condition language (no database) ---------------------------------------------------------

def _facts(**kw):
    base = {"first_name": "", "last_name": "", "email": "", "title": "", "country": "", "timezone": "",
            "source_channel": "", "traits": {}}
    return {**base, **kw}


@pytest.mark.parametrize("field,op,value,facts,expected", [
    ("title", "contains", "DIRECTOR", _facts(title="Marketing Director"), True),
    ("title", "eq", "cto", _facts(title="CTO"), True),
    ("title", "neq", "cto", _facts(title=""), True),
    ("title", "starts_with", "vp", _facts(title="VP Sales"), True),
    ("title", "not_contains", "intern", _facts(title="Intern"), False),
    ("country", "in", ["de", "fr"], _facts(country="DE"), True),
    ("country", "not_in", ["de", "fr"], _facts(country="US"), True),
    ("country", "not_in", ["de", "fr"], _facts(country=""), True),
    ("traits.plan", "exists", None, _facts(traits={"plan": "pro"}), True),
    ("traits.plan", "not_exists", None, _facts(traits={"plan": ""}), True),
    ("company.traits.employees", "gte", 50, _facts(company_traits={"employees": "250"}), True),
    ("company.traits.employees", "lt", 50, _facts(company_traits={"employees": 250}), False),
    ("company.traits.employees", "between", [50, 5000], _facts(company_traits={"employees": 5000}), True),
    ("company.traits.employees", "between", [50, 5000], _facts(company_traits={}), False),
    ("company.traits.industry", "eq", "saas", _facts(company_traits={"industry": "SaaS"}), True),
    ("company.domain", "eq", "acme.io", _facts(company_domain="ACME.io"), True),
    ("traits.tags", "contains", "vip", _facts(traits={"tags": ["VIP", "beta"]}), True),
    ("email_domain_type", "eq", "free", _facts(email="a@yahoo.co.uk"), True),
    ("email_domain_type", "eq", "free", _facts(email="a@gmx.de"), True),
    ("email_domain_type", "eq", "business", _facts(email="a@acme.io"), True),
    ("email_domain_type", "exists", None, _facts(email=""), False),
    ("email_domain", "eq", "acme.io", _facts(email="ann@acme.io"), True),
])
def test_fit_operators(field, op, value, facts, expected):
    cond = condition_validate(kind="fit", condition={"field": field, "op": op, **({"value": value} if value is not None else {})})
    assert conditions.fit_matches(cond, facts) is expected


def test_fit_groups():
    cond = condition_validate(kind="fit", condition={"all": [
        {"field": "country", "op": "eq", "value": "de"},
        {"any": [{"field": "title", "op": "contains", "value": "head"},
                 {"field": "title", "op": "contains", "value": "director"}]}]})
    assert conditions.fit_matches(cond, _facts(country="DE", title="Head of Growth"))
    assert not conditions.fit_matches(cond, _facts(country="FR", title="Head of Growth"))
    assert not conditions.fit_matches(cond, _facts(country="DE", title="Engineer"))


@pytest.mark.parametrize("kind,condition,message", [
    ("fit", {"field": "title", "op": "equals", "value": "x"}, "condition.op: unknown operator 'equals'"),
    ("fit", {"field": "titel", "op": "eq", "value": "x"}, "condition.field: unknown field 'titel'"),
    ("fit", {"all": [{"field": "title", "op": "eq", "value": "x"}, {"field": "country", "op": "in", "value": "de"}]},
     "condition.all[1]: Value error, 'in' needs a non-empty list"),
    ("fit", {"field": "traits.size", "op": "between", "value": [10]}, "'between' needs a value of two numbers"),
    ("fit", {"field": "traits.size", "op": "gt", "value": "lots"}, "'gt' needs a number"),
    ("fit", {"field": "title", "op": "exists", "value": "x"}, "'exists' takes no value"),
    ("fit", {"any": []}, "condition.any: must be a non-empty list"),
    ("fit", {"field": "title", "op": "eq", "value": "x", "weight": 2}, "condition.weight: unknown key 'weight'"),
    ("fit", "title = cto", "condition: must be an object"),
    ("engagement", {}, "needs 'event', 'type' or 'url_contains'"),
    ("engagement", {"type": "click"}, "condition.type"),
    ("engagement", {"event": "Feature Used", "properties": [{"field": "x", "op": "nope"}]},
     "condition.properties[0].op: unknown operator 'nope'"),
    ("engagement", {"any": [{"event": "Asset Downloaded"}, {"event": "email opened"}]},
     "condition.any[1]: Value error, email opens never count on their own"),
])
def test_invalid_conditions_name_the_bad_part(kind, condition, message):
    with pytest.raises(ConditionError) as info:
        condition_validate(kind=kind, condition=condition)
    assert message.replace("Value error, ", "") in str(info.value)


def test_email_opens_are_rejected_with_the_reason():
    with pytest.raises(ConditionError, match="machine|privacy|scanners") as info:
        condition_validate(kind="engagement", condition={"event": "Email Opened"})
    assert "Email Clicked" in str(info.value)


def _event(type_="track", name="", url="", props=None, context=None, **kw):
    context = context if context is not None else ({"page": {"url": url}} if url else {})
    return SimpleNamespace(type=type_, event=name, properties=props or {}, context=context, **kw)


def test_event_matchers():
    pricing = condition_validate(kind="engagement", condition={"type": "page", "url_contains": "/Pricing"})
    assert conditions.event_matches(pricing, _event("page", url="https://acme.io/pricing?x=1"))
    assert conditions.event_matches(pricing, _event("page", props={"path": "/pricing"}, context={}))
    assert not conditions.event_matches(pricing, _event("page", url="https://acme.io/blog"))
    assert not conditions.event_matches(pricing, _event("track", "Pricing", url="https://acme.io/pricing"))
    download = condition_validate(kind="engagement", condition={
        "event": "asset downloaded", "properties": [{"field": "magnet.kind", "op": "in", "value": ["ebook"]}]})
    assert conditions.event_matches(download, _event(name="Asset Downloaded", props={"magnet": {"kind": "Ebook"}}))
    assert not conditions.event_matches(download, _event(name="Asset Downloaded", props={"magnet": {"kind": "webinar"}}))


def test_decay_and_grade_maths():
    assert engine.points_now(points=40, at=T0, now=T0 + dt.timedelta(days=30), half_life_days=30) == pytest.approx(20)
    assert engine.points_now(points=40, at=T0, now=T0 + dt.timedelta(days=60), half_life_days=30) == pytest.approx(10)
    assert engine.points_now(points=40, at=T0, now=T0 + dt.timedelta(days=600), half_life_days=0) == 40
    assert engine.points_now(points=-20, at=T0, now=T0 + dt.timedelta(days=30), half_life_days=30) == pytest.approx(-10)
    assert engine.points_now(points=15, at=T0, now=T0 + dt.timedelta(days=7), half_life_days=0,
                             expires_at=T0 + dt.timedelta(days=7)) == 0
    settings = ScoringSettings(grade_a=60, grade_b=40, grade_c=20)
    assert [engine.grade_for(s, settings) for s in (75, 60, 59, 40, 20, 19, -5)] == list("AABBCDD")


# The pipeline stage, end to end through /v1/batch --------------------------------------------

def _page(uid, url, at):
    return {"type": "page", "userId": uid, "properties": {"url": url}, "context": {"page": {"url": url}},
            "timestamp": at.isoformat()}


def _track(uid, name, at, **props):
    return {"type": "track", "userId": uid, "event": name, "properties": props, "timestamp": at.isoformat()}


def _identify(uid, at, **traits):
    return {"type": "identify", "userId": uid, "traits": traits, "timestamp": at.isoformat()}


def _send(client, keys, messages, process):
    response = post_batch(client, keys, messages)
    assert response.status_code == 200, response.content
    process()


def _contact(keys, uid) -> Contact:
    return Identity.objects.get(workspace=keys.workspace, kind="user_id", value=uid).contact


def _only_rules(keys, *rules):
    """Replace the default rules of the workspace by these (kind, points, condition, extra)."""
    services.scoring_defaults_ensure(workspace_id=keys.workspace.pk)
    ScoringRule.objects.filter(workspace=keys.workspace).delete()
    made = []
    for kind, points, condition, extra in rules:
        made.append(services.rule_create(workspace=keys.workspace, kind=kind, name=f"{kind} {points}",
                                         condition=condition, points=points, actor="test", **extra))
    return made


@pytest.mark.django_db(transaction=False)
def test_defaults_score_a_hot_lead_end_to_end(client, ws, process, frozen_clock):
    now = frozen_clock()
    _send(client, ws, [
        {"type": "group", "userId": "u1", "groupId": "g1",
         "traits": {"name": "Acme", "employees": 250, "industry": "Software"}, "timestamp": now.isoformat()},
        _identify("u1", now, email="dana@acme.io", title="VP Marketing"),
        _page("u1", "https://acme.io/", now),
        _page("u1", "https://acme.io/pricing", now),
        _track("u1", "Asset Downloaded", now, slug="guide"),
        _track("u1", "Email Opened", now),
        _track("u1", "Webinar Attended", now),
    ], process)
    contact = _contact(ws, "u1")
    # business email 15 + senior 25 + size 20 + industry 10
    assert (contact.fit_score, contact.fit_grade) == (70, "A")
    # 2 page views + pricing 10 + download 15 + webinar 20; the open earns nothing
    assert contact.engagement_score == pytest.approx(47)
    explain = selectors.score_explain(contact=contact)
    assert explain["fit_total"] == contact.fit_score
    assert sum(r["points"] for r in explain["fit_rules"]) == contact.fit_score
    assert explain["engagement_total"] == pytest.approx(contact.engagement_score)
    assert sum(e["points_now"] for e in explain["engagement_entries"]) == pytest.approx(contact.engagement_score)
    assert {e["rule"] for e in explain["engagement_entries"]} == {
        "Page view", "Pricing page visit", "Lead magnet download", "Webinar attended"}


def test_daily_caps_negative_points_and_reprocessing(client, ws, process, frozen_clock):
    now = frozen_clock()
    _only_rules(ws, ("engagement", 1, {"type": "page"}, {"daily_cap": 3}),
                ("engagement", -20, {"event": "Unsubscribed"}, {}),
                ("engagement", -10, {"type": "page", "url_contains": "/careers"}, {"daily_cap": 10}))
    pages = [_page("u1", f"https://acme.io/p{n}", now + dt.timedelta(minutes=n)) for n in range(5)]
    _send(client, ws, pages, process)
    contact = _contact(ws, "u1")
    assert contact.engagement_score == 3, "a cap of 3 per day"
    _send(client, ws, [_page("u1", "https://acme.io/more", now + dt.timedelta(hours=2))], process)
    assert _contact(ws, "u1").engagement_score == 3, "the cap counts what earlier batches granted"
    tomorrow = now + dt.timedelta(days=1)
    frozen_clock.set(tomorrow)
    _send(client, ws, [_page("u1", "https://acme.io/careers", tomorrow),
                       _page("u1", "https://acme.io/careers/2", tomorrow),
                       _track("u1", "Unsubscribed", tomorrow)], process)
    # a new UTC day: 2 page views, one careers visit (-10; the second is capped), unsubscribe -20
    # with the default 30-day half-life, yesterday's 3 points are worth 3 * 0.5^(1/30)
    expected = 3 * 0.5 ** (1 / 30) + 2 - 10 - 20
    assert _contact(ws, "u1").engagement_score == pytest.approx(expected, abs=0.01)
    entries = ScoreEntry.objects.count()

    # Reprocessing every event (a crashed worker redoing batches) changes nothing.
    from leadflow.scoring.processing import process_events
    from leadflow.tracking.models import Event

    events = list(Event.objects.filter(workspace=ws.workspace).select_related("contact").order_by("pk"))
    process_events(events)
    process_events(events)
    assert ScoreEntry.objects.count() == entries
    assert _contact(ws, "u1").engagement_score == pytest.approx(expected, abs=0.01)
    services.events_replay(workspace=ws.workspace, since=now - dt.timedelta(days=1))
    assert ScoreEntry.objects.count() == entries
    assert _contact(ws, "u1").engagement_score == pytest.approx(expected, abs=0.01)


def test_decay_and_expiry_with_the_injected_clock(client, ws, process, frozen_clock):
    now = frozen_clock()
    _only_rules(ws, ("engagement", 40, {"event": "Webinar Attended"}, {}),
                ("engagement", 15, {"event": "Asset Downloaded"}, {"expires_after_days": 7}))
    _send(client, ws, [_track("u1", "Webinar Attended", now), _track("u1", "Asset Downloaded", now)], process)
    assert _contact(ws, "u1").engagement_score == 55
    frozen_clock.advance(days=7)
    assert timers_run() == ["scoring.decay", "lifecycle.timers"] or "scoring.decay" in timers_run(force=True)
    contact = _contact(ws, "u1")
    assert contact.engagement_score == pytest.approx(40 * 0.5 ** (7 / 30), abs=0.01), "the download expired"
    explain = selectors.score_explain(contact=contact)
    assert [e["expired"] for e in explain["engagement_entries"] if e["rule"].startswith("engagement 15")] == [True]
    assert explain["engagement_total"] == pytest.approx(contact.engagement_score)
    frozen_clock.set(now + dt.timedelta(days=30))
    decay_run(now=clock_module.now())
    assert _contact(ws, "u1").engagement_score == pytest.approx(20)
    assert decay_run(now=clock_module.now()) == 0, "idempotent: nothing changes at the same time"
    services.settings_update(workspace=ws.workspace, changes={"half_life_days": 0}, actor="test")
    assert _contact(ws, "u1").engagement_score == 40


def test_fit_rule_changes_rescore_everyone_and_grades_follow_settings(client, ws, process, frozen_clock):
    now = frozen_clock()
    _only_rules(ws, ("fit", 30, {"field": "country", "op": "in", "value": ["de", "at", "ch"]}, {}))
    _send(client, ws, [_identify("u1", now, email="a@acme.de", country="DE"),
                       _identify("u2", now, email="b@gmail.com", country="US")], process)
    assert (_contact(ws, "u1").fit_score, _contact(ws, "u1").fit_grade) == (30, "C")
    assert (_contact(ws, "u2").fit_score, _contact(ws, "u2").fit_grade) == (0, "D")
    rule = services.rule_create(workspace=ws.workspace, kind="fit", name="Free mail", points=-10,
                                condition={"field": "email_domain_type", "op": "eq", "value": "free"},
                                actor="test")
    assert _contact(ws, "u2").fit_score == -10
    services.rule_update(rule=rule, changes={"points": -5}, actor="test")
    assert _contact(ws, "u2").fit_score == -5 and ScoringRule.objects.get(pk=rule.pk).version == 2
    services.rule_update(rule=rule, changes={"active": False}, actor="test")
    assert _contact(ws, "u2").fit_score == 0
    services.settings_update(workspace=ws.workspace, changes={"grade_b": 25, "grade_c": 10}, actor="test")
    assert _contact(ws, "u1").fit_grade == "B"
    with pytest.raises(ServiceError, match="A must be at least B"):
        services.settings_update(workspace=ws.workspace, changes={"grade_b": 99}, actor="test")


def test_engagement_rule_deactivation_and_deletion(client, ws, process, frozen_clock):
    now = frozen_clock()
    click, _ = _only_rules(ws, ("engagement", 5, {"event": "Email Clicked"}, {}),
                           ("engagement", 10, {"event": "Form Submitted"}, {}))
    _send(client, ws, [_track("u1", "Email Clicked", now), _track("u1", "Form Submitted", now)], process)
    assert _contact(ws, "u1").engagement_score == 15
    services.rule_update(rule=click, changes={"active": False}, actor="test")
    assert _contact(ws, "u1").engagement_score == 10
    services.rule_update(rule=click, changes={"active": True}, actor="test")
    assert _contact(ws, "u1").engagement_score == 15
    services.rule_delete(rule=ScoringRule.objects.get(workspace=ws.workspace, points=10), actor="test")
    assert _contact(ws, "u1").engagement_score == 5
    services.rule_delete(rule=click, actor="test")
    assert _contact(ws, "u1").engagement_score == 0


def test_a_merge_recomputes_the_survivors_scores(client, ws, process, frozen_clock):
    now = frozen_clock()
    _only_rules(ws, ("engagement", 10, {"type": "page", "url_contains": "/pricing"}, {}),
                ("engagement", 15, {"event": "Asset Downloaded"}, {}))
    _send(client, ws, [
        {**_page("x", "https://acme.io/pricing", now), "userId": None, "anonymousId": "anon-1"},
        _track("u1", "Asset Downloaded", now)], process)
    anon = Identity.objects.get(workspace=ws.workspace, kind="anonymous_id", value="anon-1").contact
    assert anon.engagement_score == 10 and _contact(ws, "u1").engagement_score == 15
    _send(client, ws, [{"type": "identify", "userId": "u1", "anonymousId": "anon-1", "traits": {},
                        "timestamp": now.isoformat()}], process)
    survivor = _contact(ws, "u1")
    assert Contact.objects.filter(workspace=ws.workspace).count() == 1
    assert survivor.engagement_score == 25
    assert selectors.score_explain(contact=survivor)["engagement_total"] == 25


def test_the_default_rules_are_valid_and_created_once(ws):
    services.scoring_defaults_ensure(workspace_id=ws.workspace.pk)
    services.scoring_defaults_ensure(workspace_id=ws.workspace.pk)
    rules = ScoringRule.objects.filter(workspace=ws.workspace)
    assert rules.filter(kind="fit").count() >= 5 and rules.filter(kind="engagement").count() >= 8
    for rule in rules:
        assert condition_validate(kind=rule.kind, condition=rule.condition) == rule.condition
    with pytest.raises(ServiceError, match="email opens never count"):
        services.rule_create(workspace=ws.workspace, kind="engagement", name="opens", points=1,
                             condition={"event": "Email Opened"}, actor="test")


# API ------------------------------------------------------------------------------------------

def _api(client, keys, method, path, body=None):
    import orjson

    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is not None:
        return client.generic(method, f"/api/scoring{path}", orjson.dumps(body), content_type="application/json",
                              **kwargs)
    return client.generic(method, f"/api/scoring{path}", **kwargs)


def test_api_rules_settings_and_explain(client, ws, other_ws, process, frozen_clock):
    now = frozen_clock()
    listed = _api(client, ws, "GET", "/rules").json()
    assert {r["name"] for r in listed} >= {"Business email", "Lead magnet download", "Unsubscribed"}
    bad = _api(client, ws, "POST", "/rules", {"kind": "fit", "name": "x", "points": 5,
                                              "condition": {"all": [{"field": "title", "op": "like", "value": "x"}]}})
    assert bad.status_code == 400 and "condition.all[0].op: unknown operator 'like'" in bad.json()["detail"]
    opens = _api(client, ws, "POST", "/rules", {"kind": "engagement", "name": "opens", "points": 1,
                                                "condition": {"event": "Email Opened"}})
    assert opens.status_code == 400 and "email opens never count" in opens.json()["detail"]
    _send(client, ws, [_identify("u1", now, email="kim@acme.io", country="NZ"),
                       _track("u1", "Asset Downloaded", now)], process)
    contact = _contact(ws, "u1")
    assert contact.fit_score == 15
    created = _api(client, ws, "POST", "/rules", {"kind": "fit", "name": "ANZ", "points": 12,
                                                  "condition": {"field": "country", "op": "in", "value": ["au", "nz"]}})
    assert created.status_code == 201, created.content
    rule_id = created.json()["id"]
    assert _contact(ws, "u1").fit_score == 27, "a new fit rule rescores at once"
    patched = _api(client, ws, "PATCH", f"/rules/{rule_id}", {"points": 20})
    assert patched.json()["version"] == 2 and _contact(ws, "u1").fit_score == 35
    explain = _api(client, ws, "GET", f"/contacts/{contact.pk}/explain").json()
    assert explain["fit_total"] == explain["fit_score"] == 35
    assert {r["rule"] for r in explain["fit_rules"]} == {"Business email", "ANZ"}
    assert explain["engagement_total"] == explain["engagement_score"] == 15
    assert explain["engagement_entries"][0]["rule"] == "Lead magnet download"
    settings = _api(client, ws, "PUT", "/settings", {"grade_a": 30, "grade_b": 20, "grade_c": 10}).json()
    assert settings["grade_a"] == 30 and _contact(ws, "u1").fit_grade == "A"
    assert _api(client, ws, "PUT", "/settings", {"grade_c": 50}).status_code == 400
    assert _api(client, ws, "DELETE", f"/rules/{rule_id}").status_code == 204
    assert _contact(ws, "u1").fit_score == 15
    # Another workspace sees none of it.
    assert _api(client, other_ws, "GET", f"/contacts/{contact.pk}/explain").status_code == 404
    assert _api(client, other_ws, "PATCH", f"/rules/{listed[0]['id']}", {"points": 1}).status_code == 404
    assert all(r["id"] not in {x["id"] for x in listed} for r in _api(client, other_ws, "GET", "/rules").json())


# UI -------------------------------------------------------------------------------------------

def test_ui_builds_rules_without_json_and_shows_the_breakdown(client, ws, other_ws, process, frozen_clock):
    now = frozen_clock()
    marketer = user_create(username="mk", password="pw-123456789", workspace=ws.workspace, role="marketer")
    client.force_login(marketer)
    page = client.get("/scoring/")
    assert page.status_code == 200 and b"Lead magnet download" in page.content and b"Grade A from" in page.content
    response = client.post("/scoring/rules/new/", {
        "kind": "fit", "name": "Big German companies", "points": "20", "active": "on", "match": "all",
        "row-0-field": "country", "row-0-op": "eq", "row-0-value": "DE",
        "row-1-field": "company.traits.employees", "row-1-op": "between", "row-1-value": "500, 10000",
        "row-2-field": "trait", "row-2-trait": "plan", "row-2-op": "in", "row-2-value": "pro, enterprise"})
    assert response.status_code == 302, response.content.decode()[:2000]
    rule = ScoringRule.objects.get(workspace=ws.workspace, name="Big German companies")
    assert rule.condition == {"all": [{"field": "country", "op": "eq", "value": "DE"},
                                      {"field": "company.traits.employees", "op": "between", "value": [500, 10000]},
                                      {"field": "traits.plan", "op": "in", "value": ["pro", "enterprise"]}]}
    edit = client.get(f"/scoring/rules/{rule.pk}/")
    assert b'value="500, 10000"' in edit.content and b'value="plan"' in edit.content
    response = client.post("/scoring/rules/new/", {"kind": "engagement", "name": "Case study", "points": "8",
                                                   "daily_cap": "16", "active": "on", "event": "Case Study Viewed"})
    assert response.status_code == 302
    assert ScoringRule.objects.get(name="Case study").condition == {"event": "Case Study Viewed"}
    response = client.post("/scoring/rules/new/", {"kind": "engagement", "name": "Opens", "points": "1",
                                                   "active": "on", "raw": '{"event": "Email Opened"}'})
    assert response.status_code == 200 and b"email opens never count" in response.content
    response = client.post("/scoring/rules/new/", {"kind": "fit", "name": "Bad", "points": "1", "active": "on",
                                                   "raw": '{"field": "nope", "op": "eq", "value": 1}'})
    assert b"condition.field: unknown field" in response.content
    client.post(f"/scoring/rules/{rule.pk}/toggle/")
    assert not ScoringRule.objects.get(pk=rule.pk).active
    client.post("/scoring/settings/", {"grade_a": "50", "grade_b": "30", "grade_c": "10", "half_life_days": "14"})
    assert ScoringSettings.objects.get(workspace=ws.workspace).half_life_days == 14

    _send(client, ws, [_identify("u1", now, email="lee@acme.io", title="Head of Sales"),
                       _page("u1", "https://acme.io/pricing", now)], process)
    contact = _contact(ws, "u1")
    profile = client.get(f"/contacts/{contact.pk}/").content.decode()
    assert 'data-testid="fit-score">40' in profile and ">A</span>" not in profile  # 40 < 50: grade B
    assert "Senior title (director and above)" in profile and "Pricing page visit" in profile
    assert 'data-testid="engagement-score">11' in profile

    other = ScoringRule.objects.filter(workspace=other_ws.workspace).first() or \
        services.rule_create(workspace=other_ws.workspace, kind="fit", name="x", points=1,
                             condition={"field": "title", "op": "exists"}, actor="t")
    assert client.get(f"/scoring/rules/{other.pk}/").status_code == 404
    assert client.post(f"/scoring/rules/{other.pk}/delete/").status_code == 404

    sales = user_create(username="rep", password="pw-123456789", workspace=ws.workspace, role="sales")
    client.force_login(sales)
    assert client.get("/scoring/").status_code == 200
    assert client.get("/scoring/rules/new/").status_code == 403
    assert client.post(f"/scoring/rules/{rule.pk}/delete/").status_code == 403
    assert ScoringRule.objects.filter(pk=rule.pk).exists()


# CLI ------------------------------------------------------------------------------------------

def test_rescore_command_replays_stored_events(client, ws, process, frozen_clock, capsys):
    from django.core.management import call_command

    now = frozen_clock()
    _only_rules(ws)
    _send(client, ws, [_track("u1", "Demo Booked", now - dt.timedelta(days=3)),
                       _track("u1", "Demo Booked", now - dt.timedelta(days=40))], process)
    assert _contact(ws, "u1").engagement_score == 0
    services.rule_create(workspace=ws.workspace, kind="engagement", name="Demo booked", points=30,
                         condition={"event": "Demo Booked"}, actor="test")
    assert _contact(ws, "u1").engagement_score == 0, "new engagement rules apply to new events"
    call_command("scoring", "rescore", "--backfill-days", "7")
    assert "replayed 1 event since" in capsys.readouterr().out, "only the last 7 days"
    assert _contact(ws, "u1").engagement_score == pytest.approx(30 * 0.5 ** (3 / 30), abs=0.01)
    call_command("scoring", "rescore", "--backfill-days", "7")
    assert ScoreEntry.objects.count() == 1


def test_editing_traits_or_company_by_hand_rescores_fit(client, ws, process):
    from leadflow.contacts.models import Contact
    from leadflow.contacts.services import company_update, contact_traits_update
    from leadflow.scoring.services import rule_create

    rule_create(workspace=ws.workspace, kind="fit", name="Big company", points=30,
                condition={"field": "company.traits.employees", "op": "gte", "value": 500}, actor="test")
    rule_create(workspace=ws.workspace, kind="fit", name="Owns budget", points=20,
                condition={"field": "traits.budget_owner", "op": "eq", "value": True}, actor="test")
    post_batch(client, ws, [{"type": "identify", "userId": "u1",
                             "traits": {"email": "x@bigco.example", "company": "BigCo"}}])
    process()
    contact = Contact.objects.get(user_id="u1")
    from leadflow.scoring.selectors import score_explain

    def matched(c):
        return {r["rule"] for r in score_explain(contact=c)["fit_rules"]}

    assert not {"Big company", "Owns budget"} & matched(contact)
    contact_traits_update(contact=contact, traits={"budget_owner": True}, actor="test")
    contact.refresh_from_db()
    assert "Owns budget" in matched(contact) and "Big company" not in matched(contact)
    assert contact.fit_score == score_explain(contact=contact)["fit_total"]
    company_update(company=contact.company, changes={"traits": {"employees": 900}}, actor="test")
    contact.refresh_from_db()
    assert {"Big company", "Owns budget"} <= matched(contact)
    assert contact.fit_score == score_explain(contact=contact)["fit_total"]
