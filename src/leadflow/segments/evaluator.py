"""The reference evaluator: whether one contact matches a filter, in plain Python.

Slow and written to be obviously correct, it is the specification the SQL compiler is tested
against (tests/test_segment_language.py). `contact_facts_load` reads everything it needs once per
batch of contacts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Contact
from leadflow.segments import language as lang
from leadflow.segments.models import SegmentMember
from leadflow.tracking.models import Event

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclasses.dataclass(frozen=True)
class EventFacts:
    type: str
    event: str
    properties: Any
    context: Any
    timestamp: dt.datetime


@dataclasses.dataclass(frozen=True)
class ConsentFacts:
    topic: str
    status: str
    at: dt.datetime
    id: int


@dataclasses.dataclass
class ContactFacts:
    """One contact as the evaluator sees it. `columns` holds the profile columns by name
    (owner as `owner_id`); `company` is None or {"name", "domain", "traits"}."""

    id: int
    columns: dict[str, Any]
    traits: Any
    first_touch: Any
    latest_touch: Any
    owner_username: str | None = None
    company: dict | None = None
    events: list[EventFacts] = dataclasses.field(default_factory=list)
    consents: list[ConsentFacts] = dataclasses.field(default_factory=list)
    segments: set[str] = dataclasses.field(default_factory=set)


def contact_facts_load(*, workspace_id: int, contact_ids) -> dict[int, ContactFacts]:
    """Facts for those of `contact_ids` that are contacts of the workspace (one query per table
    per 500 contacts)."""
    ids = sorted(set(contact_ids))
    facts: dict[int, ContactFacts] = {}
    columns = lang.TEXT_COLUMNS + lang.NUMBER_COLUMNS + lang.DATE_COLUMNS
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        contacts = Contact.objects.filter(workspace_id=workspace_id, id__in=chunk).select_related("company", "owner")
        for c in contacts:
            company = None
            if c.company is not None:
                company = {"name": c.company.name, "domain": c.company.domain, "traits": c.company.traits}
            facts[c.id] = ContactFacts(
                id=c.id,
                columns={**{name: getattr(c, name) for name in columns}, "owner_id": c.owner_id},
                traits=c.traits, first_touch=c.first_touch, latest_touch=c.latest_touch,
                owner_username=c.owner.username if c.owner is not None else None,
                company=company,
            )
        events = Event.objects.filter(workspace_id=workspace_id, contact_id__in=chunk).values_list(
            "contact_id", "type", "event", "properties", "context", "timestamp")
        for contact_id, kind, name, properties, context, timestamp in events:
            if contact_id in facts:
                facts[contact_id].events.append(EventFacts(kind, name, properties, context, timestamp))
        consents = ConsentRecord.objects.filter(workspace_id=workspace_id, contact_id__in=chunk).values_list(
            "contact_id", "topic", "status", "at", "id")
        for contact_id, topic, status, at, pk in consents:
            if contact_id in facts:
                facts[contact_id].consents.append(ConsentFacts(topic, status, at, pk))
        members = SegmentMember.objects.filter(workspace_id=workspace_id, segment__workspace_id=workspace_id,
                                               contact_id__in=chunk).values_list("contact_id", "segment__slug")
        for contact_id, slug in members:
            if contact_id in facts:
                facts[contact_id].segments.add(slug)
    return facts


# --- values ----------------------------------------------------------------------------------------

def _fold(text: str) -> str:
    return text.translate(_ASCII_LOWER)


def _missing(value: Any) -> bool:
    return value is None or value == ""


def _as_number(value: Any) -> float | None:
    """A JSON number, or a numeric string ("250", "-3.5"), as a float; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if lang.numeric_string(value):
        return float(value)
    return None


def _json_equal(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool):
        return isinstance(actual, bool) and actual == expected
    if isinstance(expected, (int, float)):
        number = _as_number(actual)
        return number is not None and number == float(expected)
    if isinstance(actual, str) and _fold(actual) == _fold(expected):
        return True
    if lang.numeric_string(expected):
        number = _as_number(actual)
        return number is not None and number == float(expected)
    return False


def _json_positive(actual: Any, op: str, value: Any) -> bool:
    if op == "exists":
        return not _missing(actual)
    if _missing(actual):
        return False
    if op == "eq":
        return _json_equal(actual, value)
    if op == "in":
        return any(_json_equal(actual, v) for v in value)
    if op == "contains":  # text containing it, or a list with it as an element
        if isinstance(actual, list):
            return any(isinstance(item, str) and _fold(item) == _fold(value) for item in actual)
        return isinstance(actual, str) and _fold(value) in _fold(actual)
    if op == "starts_with":
        return isinstance(actual, str) and _fold(actual).startswith(_fold(value))
    number = _as_number(actual)
    if number is None:
        return False
    if op == "between":
        return float(value[0]) <= number <= float(value[1])
    limit = float(value)
    return {"gt": number > limit, "gte": number >= limit, "lt": number < limit, "lte": number <= limit}[op]


def _text_positive(actual: str, op: str, value: Any) -> bool:
    if _missing(actual):
        return False
    if op == "exists":
        return True
    if op == "eq":
        return _fold(actual) == _fold(value)
    if op == "in":
        return any(_fold(actual) == _fold(v) for v in value)
    if op == "contains":
        return _fold(value) in _fold(actual)
    if op == "starts_with":
        return _fold(actual).startswith(_fold(value))
    raise AssertionError(op)


def _number_positive(actual: Any, op: str, value: Any) -> bool:
    if actual is None:
        return False
    actual = float(actual)
    if op == "exists":
        return True
    if op == "eq":
        return actual == float(value)
    if op == "in":
        return any(actual == float(v) for v in value)
    if op == "between":
        return float(value[0]) <= actual <= float(value[1])
    limit = float(value)
    return {"gt": actual > limit, "gte": actual >= limit, "lt": actual < limit, "lte": actual <= limit}[op]


def _date_positive(actual: dt.datetime | None, op: str, value: Any, now: dt.datetime) -> bool:
    if actual is None:
        return False
    if op == "exists":
        return True
    return lang.date_bounds(op, value, now).contains(actual)


def _owner_positive(facts: ContactFacts, op: str, value: Any) -> bool:
    owner_id = facts.columns["owner_id"]
    if op == "exists":
        return owner_id is not None

    def equal(expected) -> bool:
        if isinstance(expected, int):
            return owner_id == expected
        if expected.lower() == "none":
            return owner_id is None
        if expected.isdigit():
            return owner_id == int(expected)
        return owner_id is not None and facts.owner_username == expected

    return equal(value) if op == "eq" else any(equal(v) for v in value)


def _dig(data: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _field_matches(cond: lang.FieldCondition, *, facts: ContactFacts | None, event: EventFacts | None,
                   now: dt.datetime) -> bool:
    spec = cond.spec
    negative = cond.op in lang.NEGATIVE
    op = lang.NEGATIVE.get(cond.op, cond.op)
    if spec.on == "event":
        positive = _json_positive(_dig(event.properties, spec.keys), op, cond.value)
    elif spec.on == "company":
        company = facts.company
        if company is None:
            positive = False
        elif spec.kind == "json":
            positive = _json_positive(_dig(company["traits"], spec.keys), op, cond.value)
        else:
            positive = _text_positive(company[spec.column], op, cond.value)
    elif spec.kind == "json":
        source = {"traits": facts.traits, "first_touch": facts.first_touch,
                  "latest_touch": facts.latest_touch}[spec.column]
        positive = _json_positive(_dig(source, spec.keys), op, cond.value)
    elif spec.kind == "text":
        positive = _text_positive(facts.columns[spec.column], op, cond.value)
    elif spec.kind == "number":
        positive = _number_positive(facts.columns[spec.column], op, cond.value)
    elif spec.kind == "date":
        positive = _date_positive(facts.columns[spec.column], op, cond.value, now)
    else:
        positive = _owner_positive(facts, op, cond.value)
    return not positive if negative else positive


def _visit_matches(event: EventFacts, pattern: str) -> bool:
    regex = re.compile(lang.glob_regex(pattern))
    sources = {"properties": event.properties, "context": event.context}
    for column, keys in lang.PAGE_URL_SOURCES:
        value = _dig(sources[column], keys)
        if isinstance(value, str) and regex.search(value):
            return True
    return False


def _matching_events(facts: ContactFacts, spec: lang.EventSpec, bounds: lang.Bounds, now: dt.datetime) -> list:
    found = []
    for event in facts.events:
        if spec.name is not None and event.event != spec.name:
            continue
        if spec.type is not None and event.type != spec.type:
            continue
        if not bounds.contains(event.timestamp):
            continue
        if not all(_field_matches(c, facts=None, event=event, now=now) for c in spec.where):
            continue
        if spec.url_glob is not None and not _visit_matches(event, spec.url_glob):
            continue
        found.append(event)
    return found


def _matches(cond, facts: ContactFacts, now: dt.datetime) -> bool:
    if isinstance(cond, lang.AllGroup):
        return all(_matches(c, facts, now) for c in cond.all)
    if isinstance(cond, lang.AnyGroup):
        return any(_matches(c, facts, now) for c in cond.any)
    if isinstance(cond, lang.NotGroup):
        return not _matches(cond.not_, facts, now)
    if isinstance(cond, lang.FieldCondition):
        return _field_matches(cond, facts=facts, event=None, now=now)
    if isinstance(cond, (lang.FirstPerformed, lang.LastPerformed)):
        times = [e.timestamp for e in _matching_events(facts, cond.events(), lang.Bounds(), now)]
        if not times:
            return False
        when = min(times) if isinstance(cond, lang.FirstPerformed) else max(times)
        return cond.bounds(now).contains(when)
    if isinstance(cond, lang.NotPerformed):
        return not _matching_events(facts, cond.events(), cond.window(now), now)
    if isinstance(cond, lang.BEHAVIOUR_KINDS):
        n = len(_matching_events(facts, cond.events(), cond.window(now), now))
        op, wanted = (cond.count.op, cond.count.value) if cond.count is not None else ("gte", 1)
        return {"gte": n >= wanted, "lte": n <= wanted, "eq": n == wanted}[op]
    if isinstance(cond, lang.ConsentCondition):
        records = sorted((r for r in facts.consents if r.topic == cond.consent), key=lambda r: (r.at, r.id))
        if cond.status == "none":
            return not records
        return bool(records) and records[-1].status == cond.status
    if isinstance(cond, lang.InSegment):
        return cond.in_segment in facts.segments
    if isinstance(cond, lang.NotInSegment):
        return cond.not_in_segment not in facts.segments
    raise AssertionError(f"no evaluator for {type(cond).__name__}")


def filter_matches(flt: lang.Filter | object, *, contact_facts: ContactFacts, now: dt.datetime) -> bool:
    """Whether the contact matches the filter at `now`."""
    if not isinstance(flt, lang.Filter):
        flt = lang.filter_parse(flt)
    return _matches(flt.root, contact_facts, now)
