"""The filter language compiled to one ORM `Q` over contacts, for SQLite and PostgreSQL.

Everything is built from ORM expressions (lookups, `Exists`, `Subquery`, `Case`, `Cast`) and two
small JSON functions below whose key paths are bound parameters, so nothing the user wrote is
ever spliced into SQL text.

Every positive leaf compiles to a condition that is TRUE or FALSE, never NULL (missing values are
guarded explicitly), so that a negative op or a `not` group is exactly its negation in SQL's
three-valued logic too. The semantics are written down in `leadflow.segments.language`; the
reference evaluator (`evaluator.filter_matches`) must agree with this module on every filter.
"""

from __future__ import annotations

import datetime as dt
import string
from functools import reduce

from django.contrib.auth import get_user_model
from django.db.models import (
    BooleanField,
    Case,
    CharField,
    Count,
    Exists,
    F,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Q,
    Subquery,
    TextField,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    IContains,
    IExact,
    In,
    IStartsWith,
    LessThan,
    LessThanOrEqual,
    Regex,
)

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Company
from leadflow.segments import language as lang
from leadflow.segments.models import SegmentMember
from leadflow.tracking.models import Event

TRUE = Q(pk__isnull=False)
FALSE = Q(pk__isnull=True)


# --- JSON access --------------------------------------------------------------------------------

def _sqlite_path(keys: tuple[str, ...]) -> str:
    # Key names are restricted to [A-Za-z0-9_-$@ ] by the language, so quoting is enough.
    return "$" + "".join(f'."{key}"' for key in keys)


class JsonText(Func):
    """The JSON value at `keys` inside `column`: text for JSON strings (and, on PostgreSQL, the
    text form of anything else); NULL when absent."""

    output_field = TextField()

    def __init__(self, column, keys: tuple[str, ...]):
        super().__init__(F(column) if isinstance(column, str) else column)
        self.keys = tuple(keys)

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"JSON_EXTRACT({sql}, %s)", (*params, _sqlite_path(self.keys))

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"({sql} #>> %s)", (*params, list(self.keys))

    def as_sql(self, compiler, connection, **extra):
        raise NotImplementedError(f"segment filters support SQLite and PostgreSQL, not {connection.vendor}")


class JsonKind(Func):
    """The JSON type at `keys`, the same on both stores: string, number, true, false, null,
    array, object, or missing."""

    output_field = CharField()

    def __init__(self, column, keys: tuple[str, ...]):
        super().__init__(F(column) if isinstance(column, str) else column)
        self.keys = tuple(keys)

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        path = _sqlite_path(self.keys)
        template = (f"COALESCE(CASE JSON_TYPE({sql}, %s) WHEN 'integer' THEN 'number' WHEN 'real' THEN 'number' "
                    f"WHEN 'text' THEN 'string' ELSE JSON_TYPE({sql}, %s) END, 'missing')")
        return template, (*params, path, *params, path)

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        keys = list(self.keys)
        template = (f"COALESCE(CASE JSONB_TYPEOF({sql} #> %s) WHEN 'boolean' THEN ({sql} #>> %s) "
                    f"ELSE JSONB_TYPEOF({sql} #> %s) END, 'missing')")
        return template, (*params, keys, *params, keys, *params, keys)

    def as_sql(self, compiler, connection, **extra):
        raise NotImplementedError(f"segment filters support SQLite and PostgreSQL, not {connection.vendor}")


_UPPER, _LOWER = string.ascii_uppercase, string.ascii_lowercase


class JsonArrayHas(Func):
    """Whether the JSON array at `keys` has a string element equal to `text`, compared with ASCII
    letters folded as the reference evaluator does (`traits.tags contains "vip"`). Use it with
    `JsonKind(...) == "array"`: on SQLite `json_each` also walks objects and scalars."""

    output_field = BooleanField()
    conditional = True

    def __init__(self, column, keys: tuple[str, ...], text: str):
        super().__init__(F(column) if isinstance(column, str) else column)
        self.keys, self.text = tuple(keys), text

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        # SQLite's lower() folds ASCII letters only, as the evaluator does.
        return (f"EXISTS (SELECT 1 FROM JSON_EACH({sql}, %s) AS item WHERE item.type = 'text' "
                f"AND LOWER(item.value) = LOWER(%s))", (*params, _sqlite_path(self.keys), self.text))

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        keys = list(self.keys)
        return (f"EXISTS (SELECT 1 FROM JSONB_ARRAY_ELEMENTS(CASE WHEN JSONB_TYPEOF({sql} #> %s) = 'array' "
                f"THEN {sql} #> %s END) AS item(v) WHERE JSONB_TYPEOF(item.v) = 'string' "
                f"AND TRANSLATE(item.v #>> '{{}}', %s, %s) = TRANSLATE(%s, %s, %s))",
                (*params, keys, *params, keys, _UPPER, _LOWER, self.text, _UPPER, _LOWER))

    def as_sql(self, compiler, connection, **extra):
        raise NotImplementedError(f"segment filters support SQLite and PostgreSQL, not {connection.vendor}")


def _number(value) -> Value:
    return Value(float(value), output_field=FloatField())


_COMPARE = {"gt": GreaterThan, "gte": GreaterThanOrEqual, "lt": LessThan, "lte": LessThanOrEqual}


def _any(parts) -> Q:
    return reduce(lambda a, b: a | b, parts)


def _all(parts) -> Q:
    return reduce(lambda a, b: a & b, parts)


def _json_positive(column: str, keys: tuple[str, ...], op: str, value) -> Q:
    kind, text = JsonKind(column, keys), JsonText(column, keys)
    is_string = Q(Exact(kind, "string"))
    is_numeric = Q(Exact(kind, "number")) | (is_string & Q(Regex(text, lang.NUMERIC_STRING)))
    number = Case(When(is_numeric, then=Cast(text, FloatField())), default=Value(None), output_field=FloatField())

    def equal(expected) -> Q:
        if isinstance(expected, bool):
            return Q(Exact(kind, "true" if expected else "false"))
        if lang.is_number(expected):
            return is_numeric & Q(Exact(number, _number(expected)))
        q = is_string & Q(IExact(text, expected))
        if lang.numeric_string(expected):
            q |= is_numeric & Q(Exact(number, _number(float(expected))))
        return q

    if op == "exists":
        return (Q(In(kind, ["string", "number", "true", "false", "array", "object"]))
                & ~(is_string & Q(Exact(text, ""))))
    if op == "eq":
        return equal(value)
    if op == "in":
        return _any(equal(v) for v in value)
    if op == "contains":  # text containing it, or a list with it as an element
        return (is_string & Q(IContains(text, value))) | (Q(Exact(kind, "array"))
                                                         & Q(JsonArrayHas(column, keys, value)))
    if op == "starts_with":
        return is_string & Q(IStartsWith(text, value))
    if op == "between":
        return is_numeric & Q(GreaterThanOrEqual(number, _number(value[0]))) & Q(LessThanOrEqual(number, _number(value[1])))
    if op in _COMPARE:
        return is_numeric & Q(_COMPARE[op](number, _number(value)))
    raise AssertionError(op)


# --- profile and company columns ---------------------------------------------------------------

def _text_positive(column: str, op: str, value) -> Q:
    if op == "exists":
        return ~Q(**{column: ""})
    if op == "eq":
        return Q(**{f"{column}__iexact": value})
    if op == "in":
        return _any(Q(**{f"{column}__iexact": v}) for v in value)
    if op == "contains":
        return Q(**{f"{column}__icontains": value})
    if op == "starts_with":
        return Q(**{f"{column}__istartswith": value})
    raise AssertionError(op)


def _number_positive(column: str, op: str, value, nullable: bool) -> Q:
    present = Q(**{f"{column}__isnull": False}) if nullable else TRUE
    if op == "exists":
        return present
    col = F(column)
    if op == "eq":
        return present & Q(Exact(col, _number(value)))
    if op == "in":
        return present & _any(Q(Exact(col, _number(v))) for v in value)
    if op == "between":
        return present & Q(GreaterThanOrEqual(col, _number(value[0]))) & Q(LessThanOrEqual(col, _number(value[1])))
    return present & Q(_COMPARE[op](col, _number(value)))


def _bounds_q(column: str, bounds: lang.Bounds) -> Q:
    q = Q()
    if bounds.lo is not None:
        q &= Q(**{f"{column}__{'gte' if bounds.lo_inclusive else 'gt'}": bounds.lo})
    if bounds.hi is not None:
        q &= Q(**{f"{column}__{'lte' if bounds.hi_inclusive else 'lt'}": bounds.hi})
    return q


def _date_positive(column: str, op: str, value, nullable: bool, now: dt.datetime) -> Q:
    present = Q(**{f"{column}__isnull": False}) if nullable else TRUE
    if op == "exists":
        return present
    return present & _bounds_q(column, lang.date_bounds(op, value, now))


def _owner_positive(op: str, value) -> Q:
    if op == "exists":
        return Q(owner_id__isnull=False)

    def equal(expected) -> Q:
        if isinstance(expected, int):
            return Q(owner_id__isnull=False) & Q(owner_id=expected)
        if expected.lower() == "none":
            return Q(owner_id__isnull=True)
        if expected.isdigit():
            return Q(owner_id__isnull=False) & Q(owner_id=int(expected))
        users = get_user_model().objects.filter(username=expected).values("pk")
        return Q(owner_id__isnull=False) & Q(owner_id__in=users)

    if op == "eq":
        return equal(value)
    return _any(equal(v) for v in value)


def field_positive(spec: lang.FieldSpec, op: str, value, now: dt.datetime) -> Q:
    """The positive form of `op` on the field, as a Q over the model the field lives on."""
    if spec.kind == "json":
        return _json_positive(spec.column, spec.keys, op, value)
    if spec.kind == "text":
        return _text_positive(spec.column, op, value)
    if spec.kind == "number":
        return _number_positive(spec.column, op, value, spec.nullable)
    if spec.kind == "date":
        return _date_positive(spec.column, op, value, spec.nullable, now)
    if spec.kind == "owner":
        return _owner_positive(op, value)
    raise AssertionError(spec.kind)


def _company_exists(positives: list[Q]) -> Q:
    """The contact's company meets every one of `positives` (Qs over Company)."""
    return Q(Exists(Company.objects.filter(pk=OuterRef("company_id")).filter(_all(positives))))


def _field_q(cond: lang.FieldCondition, now: dt.datetime) -> Q:
    """The condition as a Q on the model its field lives on (contact, company or event)."""
    op = lang.NEGATIVE.get(cond.op, cond.op)
    positive = field_positive(cond.spec, op, cond.value, now)
    if cond.spec.on == "company":
        positive = _company_exists([positive])
    return ~positive if cond.op in lang.NEGATIVE else positive


def _company_positive(cond) -> bool:
    """A company field condition with a positive op (a negative one is NOT EXISTS, kept apart)."""
    return isinstance(cond, lang.FieldCondition) and cond.spec.on == "company" and cond.op not in lang.NEGATIVE


# --- behaviour -------------------------------------------------------------------------------------

def _url_q(pattern: str) -> Q:
    regex = lang.glob_regex(pattern)
    return _any(Q(Exact(JsonKind(column, keys), "string")) & Q(Regex(JsonText(column, keys), regex))
                for column, keys in lang.PAGE_URL_SOURCES)


def _events(spec: lang.EventSpec, *, workspace_id: int, now: dt.datetime, bounds: lang.Bounds | None = None):
    qs = Event.objects.filter(workspace_id=workspace_id, contact_id=OuterRef("pk"))
    if spec.name is not None:
        # Names are never empty, so `NOT (event = '')` changes nothing; it is the partial index
        # event_contact_name_time's own condition, written out for SQLite, which uses a partial
        # index only when the query repeats its WHERE terms (PostgreSQL infers it from the name).
        qs = qs.filter(event=spec.name).exclude(event="")
    if spec.type is not None:
        qs = qs.filter(type=spec.type)
    for cond in spec.where:
        qs = qs.filter(_field_q(cond, now))
    if spec.url_glob is not None:
        qs = qs.filter(_url_q(spec.url_glob))
    if bounds is not None:
        qs = qs.filter(_bounds_q("timestamp", bounds))
    return qs


def _count_q(events, count: lang.Count | None) -> Q:
    op, n = (count.op, count.value) if count is not None else ("gte", 1)
    if op == "gte" and n == 0:
        return TRUE
    if op == "gte" and n == 1:
        return Q(Exists(events))
    if op in ("eq", "lte") and n == 0:
        return ~Q(Exists(events))
    counted = events.order_by().values("contact_id").annotate(n=Count("pk")).values("n")
    total = Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))
    lookup = {"gte": GreaterThanOrEqual, "lte": LessThanOrEqual, "eq": Exact}[op]
    return Q(lookup(total, Value(n)))


def _first_last_q(cond, *, workspace_id: int, now: dt.datetime) -> Q:
    """first/last performed through EXISTS only: e.g. "first time before T" is "some event before T"
    and "first time at or after T" is "some event, and none before T"."""
    events = _events(cond.events(), workspace_id=workspace_id, now=now)
    b = cond.bounds(now)
    parts = []
    if isinstance(cond, lang.FirstPerformed):
        if b.hi is not None:
            parts.append(Q(Exists(events.filter(timestamp__lte=b.hi) if b.hi_inclusive
                                  else events.filter(timestamp__lt=b.hi))))
        if b.lo is not None:
            earlier = events.filter(timestamp__lt=b.lo) if b.lo_inclusive else events.filter(timestamp__lte=b.lo)
            parts.append(Q(Exists(events)) & ~Q(Exists(earlier)))
    else:
        if b.lo is not None:
            parts.append(Q(Exists(events.filter(timestamp__gte=b.lo) if b.lo_inclusive
                                  else events.filter(timestamp__gt=b.lo))))
        if b.hi is not None:
            later = events.filter(timestamp__gt=b.hi) if b.hi_inclusive else events.filter(timestamp__gte=b.hi)
            parts.append(Q(Exists(events)) & ~Q(Exists(later)))
    return _all(parts)


# --- the whole filter ------------------------------------------------------------------------------

def _cost(cond) -> int:
    """A rough evaluation cost, to test cheap conditions first in an `all` group (every leaf is TRUE
    or FALSE, never NULL, so the order cannot change the result): profile columns, then company
    fields, consent and segment membership, then events — an EXISTS over a named event in a
    window before counts and page patterns, which read all of a person's matching events."""
    if isinstance(cond, lang.FieldCondition):
        return 1 if cond.spec.on == "company" else 0
    if isinstance(cond, (lang.AllGroup, lang.AnyGroup)):
        children = cond.all if isinstance(cond, lang.AllGroup) else cond.any
        return max((_cost(c) for c in children), default=0)
    if isinstance(cond, lang.NotGroup):
        return _cost(cond.not_)
    if isinstance(cond, (lang.ConsentCondition, lang.InSegment, lang.NotInSegment)):
        return 2
    if isinstance(cond, lang.BEHAVIOUR_KINDS):
        count = getattr(cond, "count", None)
        counted = count is not None and not (count.op == "gte" and count.value <= 1)
        windowed = getattr(cond, "within_days", None) is not None or getattr(cond, "between", None) is not None
        named = not isinstance(cond, lang.Visited)  # a page pattern reads every page view
        # an EXISTS over a named event in a window reads a few rows; a count reads them all
        return 3 + (not windowed) + (not named) + 2 * counted
    return 4


def _compile(cond, *, workspace_id: int, now: dt.datetime) -> Q:
    if isinstance(cond, lang.AllGroup):
        # The positive company conditions of the group are one EXISTS: a contact has at most one
        # company, so "its company is SaaS" and "its company has 50-500 employees" is "its company
        # is SaaS with 50-500 employees", one look-up (or, hashed, one pass over the companies that
        # tests the second condition only where the first held) instead of two.
        children = sorted(cond.all, key=_cost)
        company = [c for c in children if _company_positive(c)]
        if len(company) < 2:
            return _all(_compile(c, workspace_id=workspace_id, now=now) for c in children)
        merged = _company_exists([field_positive(c.spec, c.op, c.value, now) for c in company])
        return _all(merged if c is company[0] else _compile(c, workspace_id=workspace_id, now=now)
                    for c in children if c is company[0] or not _company_positive(c))
    if isinstance(cond, lang.AnyGroup):
        return _any(_compile(c, workspace_id=workspace_id, now=now) for c in cond.any)
    if isinstance(cond, lang.NotGroup):
        return ~_compile(cond.not_, workspace_id=workspace_id, now=now)
    if isinstance(cond, lang.FieldCondition):
        return _field_q(cond, now)
    if isinstance(cond, (lang.FirstPerformed, lang.LastPerformed)):
        return _first_last_q(cond, workspace_id=workspace_id, now=now)
    if isinstance(cond, lang.NotPerformed):
        events = _events(cond.events(), workspace_id=workspace_id, now=now, bounds=cond.window(now))
        return ~Q(Exists(events))
    if isinstance(cond, lang.BEHAVIOUR_KINDS):
        events = _events(cond.events(), workspace_id=workspace_id, now=now, bounds=cond.window(now))
        return _count_q(events, cond.count)
    if isinstance(cond, lang.ConsentCondition):
        records = ConsentRecord.objects.filter(workspace_id=workspace_id, contact_id=OuterRef("pk"),
                                               topic=cond.consent)
        if cond.status == "none":
            return ~Q(Exists(records))
        latest = Subquery(records.order_by("-at", "-id").values("status")[:1])
        return Q(Exists(records)) & Q(Exact(latest, cond.status))
    if isinstance(cond, (lang.InSegment, lang.NotInSegment)):
        slug = cond.in_segment if isinstance(cond, lang.InSegment) else cond.not_in_segment
        members = SegmentMember.objects.filter(workspace_id=workspace_id, segment__workspace_id=workspace_id,
                                               segment__slug=slug, contact_id=OuterRef("pk"))
        return Q(Exists(members)) if isinstance(cond, lang.InSegment) else ~Q(Exists(members))
    raise AssertionError(f"no compiler for {type(cond).__name__}")


def per_row(condition: Q) -> Q:
    """`condition` tested contact by contact, its conditions in the order written (cheap first).

    Left bare, PostgreSQL turns a filter's EXISTS into semi-joins and may then drive the query
    from another table (all companies of an industry, every recent event) when its estimate of a
    JSON condition is far too low: for 1,000 known contacts on 20M events that took 96 s instead of
    milliseconds. Inside a CASE the subqueries stay subplans (per row, or hashed when many rows
    need them), the scan starts from the contacts, and the cheap profile tests weed out most of
    them before any event is read: the benchmark segment's full evaluation went from 7.5–9.7 s to
    2.8–4.1 s at 1M contacts / 20M events. Membership evaluations and previews use it."""
    return Q(Case(When(condition, then=Value(True)), default=Value(False), output_field=BooleanField()))


def filter_q(flt: lang.Filter | object, *, workspace_id: int, now: dt.datetime):
    """A Q for ``Contact.objects.filter(workspace_id=workspace_id)`` matching the filter at `now`."""
    if not isinstance(flt, lang.Filter):
        flt = lang.filter_parse(flt)
    return _compile(flt.root, workspace_id=workspace_id, now=now)
