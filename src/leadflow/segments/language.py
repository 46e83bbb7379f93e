"""The segment filter language: a typed, versioned JSON description of an audience.

A filter is one condition with ``"version": 1`` beside it at the root::

    {"version": 1, "all": [
        {"field": "company.traits.industry", "op": "eq", "value": "SaaS"},
        {"field": "company.traits.employees", "op": "between", "value": [50, 500]},
        {"field": "engagement_score", "op": "gt", "value": 40},
        {"magnet_downloaded": "pricing-guide", "within_days": 30},
        {"visited": "/pricing*", "count": {"op": "gte", "value": 3}},
        {"not": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}}
    ]}

Groups: ``{"all": [...]}``, ``{"any": [...]}``, ``{"not": cond}``. Conditions:

- fields: ``{"field": F, "op": OP, "value": V}``. F is a profile column (email, title, country,
  scores, lifecycle_stage, owner, source_channel, created_at, …), ``traits.NAME``,
  ``company.name|domain``, ``company.traits.NAME``, ``first_touch.KEY`` / ``latest_touch.KEY``
  (``utm_source`` etc. alone mean the first touch). Which ops apply depends on the field's kind
  (`FIELD_KIND_OPS`).
- behaviour: ``performed`` (with ``where`` property conditions, ``count``, ``within_days`` or
  ``between``), ``not_performed``, ``first_performed`` / ``last_performed`` with a date op,
  ``visited`` (a URL glob over page events).
- shortcuts: ``magnet_downloaded``, ``form_submitted``, ``email_clicked``, ``email_received``,
  ``consent``, ``in_segment`` / ``not_in_segment``.

Semantics, shared by the SQL compiler (`compiler.filter_q`) and the reference evaluator
(`evaluator.filter_matches`):

- A value is *missing* when it is absent, JSON null or the empty string. A missing value matches
  only the negative ops (``neq``, ``not_contains``, ``not_in``, ``not_exists``); every negative op
  is exactly the negation of its positive op.
- Text comparisons ignore case for ASCII letters (other letters fold as the store folds them:
  SQLite folds only ASCII, PostgreSQL follows the database locale).
- JSON values (traits, company traits, touches, event properties) keep their JSON type. A string
  compares as text. Numeric ops (gt/gte/lt/lte/between, and eq with a number) take JSON numbers
  and *numeric strings*: an optional minus sign, 1-15 digits, optionally a dot and 1-15 digits
  (``"250"``, ``"-3.5"``; not ``"1e3"``, ``"1,000"``, ``" 250"``). ``eq "250"`` matches the text
  ``"250"`` and any value numerically equal to 250. Booleans match only ``eq``/``in`` with
  ``true``/``false``. Arrays and objects exist but match no comparison.
- Dates: an ISO date means the whole day (UTC): ``before D`` is earlier than the day's start,
  ``after D`` is from the next day on, ``between [D1, D2]`` covers both days. A date-time is an
  instant: ``before``/``after`` are strict and ``between`` includes both ends.
  ``more_than_days_ago N`` is strictly earlier than now - N days, ``less_than_days_ago N`` is
  strictly later than now - N days.
- Event windows: ``within_days N`` counts events at or after now - N days; ``between`` as for
  dates; neither means ever. Event names match exactly (case-sensitive).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadflow.core.services import ServiceError

VERSION = 1
MAX_DEPTH = 10
MAX_CONDITIONS = 200
MAX_LIST = 500
MAX_DAYS = 36500

# Events the shortcuts stand for.
MAGNET_EVENT, MAGNET_PROPERTY = "Asset Downloaded", "magnet_slug"
FORM_EVENT, FORM_PROPERTY = "Form Submitted", "form_slug"
EMAIL_CLICKED_EVENT = "Email Clicked"
EMAIL_RECEIVED_EVENT = "Email Delivered"
EMAIL_PROPERTY = "campaign"
PAGE_TYPE = "page"
# Where a page event keeps its URL or path (JSON column, keys); a visit matches if any does.
PAGE_URL_SOURCES = (("properties", ("path",)), ("properties", ("url",)),
                    ("context", ("page", "path")), ("context", ("page", "url")))

NUMERIC_STRING = r"\A-?[0-9]{1,15}(\.[0-9]{1,15})?\Z"
_NUMERIC_RE = re.compile(NUMERIC_STRING)
_DATE_ONLY_RE = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")
_KEY_RE = re.compile(r"\A[A-Za-z0-9_\-$@ ]{1,100}\Z")
UTC = dt.timezone.utc


class FilterError(ServiceError):
    """A filter that is not valid. `path` names the bad part (``all[2].within_days``)."""

    def __init__(self, message: str, *, path: str = ""):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


# --- fields ---------------------------------------------------------------------------------------

TEXT_OPS = ("eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in", "exists", "not_exists")
NUMBER_OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "between", "in", "not_in", "exists", "not_exists")
DATE_OPS = ("before", "after", "between", "more_than_days_ago", "less_than_days_ago", "exists", "not_exists")
OWNER_OPS = ("eq", "neq", "in", "not_in", "exists", "not_exists")
JSON_OPS = ("eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in", "exists", "not_exists",
            "gt", "gte", "lt", "lte", "between")
ALL_OPS = tuple(dict.fromkeys(TEXT_OPS + NUMBER_OPS + DATE_OPS + JSON_OPS))
NEGATIVE = {"neq": "eq", "not_contains": "contains", "not_in": "in", "not_exists": "exists"}
FIELD_KIND_OPS = {"text": TEXT_OPS, "number": NUMBER_OPS, "date": DATE_OPS, "owner": OWNER_OPS, "json": JSON_OPS}

TEXT_COLUMNS = ("email", "user_id", "first_name", "last_name", "phone", "title", "country", "timezone",
                "source_channel", "fit_grade", "lifecycle_stage")
NUMBER_COLUMNS = ("fit_score", "engagement_score", "conversion_probability")
NULLABLE_NUMBER_COLUMNS = ("conversion_probability",)
DATE_COLUMNS = ("created_at", "first_seen_at", "last_seen_at", "stage_changed_at")
NULLABLE_DATE_COLUMNS = ("first_seen_at", "last_seen_at", "stage_changed_at")
COMPANY_TEXT_COLUMNS = ("name", "domain")
TOUCH_KEYS = ("channel", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "referrer",
              "landing_page", "form")
UTM_ALIASES = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What a field name refers to.

    kind: text | number | date | owner | json. on: "contact", "company" or "event".
    column: the model column; keys: the path inside a JSON column.
    """

    kind: str
    on: str
    column: str
    keys: tuple[str, ...] = ()
    nullable: bool = False


FIELD_HELP = ("a profile field (" + ", ".join(TEXT_COLUMNS + NUMBER_COLUMNS + DATE_COLUMNS) +
              ", owner), traits.NAME, company.name, company.domain, company.traits.NAME, "
              "utm_source|utm_medium|utm_campaign|utm_term|utm_content, first_touch.KEY or latest_touch.KEY")


def _json_keys(dotted: str) -> tuple[str, ...]:
    keys = tuple(dotted.split("."))
    for key in keys:
        if not _KEY_RE.match(key) or key.isdigit():
            raise ValueError(f"{key!r} is not a valid key name (letters, digits, _ - $ @ and spaces, "
                             "not only digits, at most 100 characters)")
    return keys


def field_spec(name: str) -> FieldSpec:
    """The field a condition names on a contact, or ValueError naming what is allowed."""
    if name in TEXT_COLUMNS:
        return FieldSpec("text", "contact", name)
    if name in NUMBER_COLUMNS:
        return FieldSpec("number", "contact", name, nullable=name in NULLABLE_NUMBER_COLUMNS)
    if name in DATE_COLUMNS:
        return FieldSpec("date", "contact", name, nullable=name in NULLABLE_DATE_COLUMNS)
    if name == "owner":
        return FieldSpec("owner", "contact", "owner_id", nullable=True)
    if name in UTM_ALIASES:
        return FieldSpec("json", "contact", "first_touch", (name,))
    if name.startswith("company.") and name[8:] in COMPANY_TEXT_COLUMNS:
        return FieldSpec("text", "company", name[8:])
    for prefix, on, column in (("company.traits.", "company", "traits"), ("traits.", "contact", "traits"),
                               ("first_touch.", "contact", "first_touch"),
                               ("latest_touch.", "contact", "latest_touch")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if not rest:
                break
            if column.endswith("touch") and rest not in TOUCH_KEYS:
                raise ValueError(f"unknown touch key {rest!r}; use one of {', '.join(TOUCH_KEYS)}")
            return FieldSpec("json", on, column, _json_keys(rest))
    raise ValueError(f"unknown field {name!r}; use {FIELD_HELP}")


def property_spec(name: str) -> FieldSpec:
    if not name.startswith("properties.") or len(name) == len("properties."):
        raise ValueError(f"unknown property field {name!r}; event conditions look at properties.NAME")
    return FieldSpec("json", "event", "properties", _json_keys(name[len("properties."):]))


# --- values -----------------------------------------------------------------------------------

def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def numeric_string(value: Any) -> bool:
    return isinstance(value, str) and _NUMERIC_RE.match(value) is not None


def is_date_only(text: str) -> bool:
    return bool(_DATE_ONLY_RE.match(text))


def parse_when(text: Any) -> dt.datetime:
    """An ISO date (taken as the start of that day, UTC) or date-time (naive = UTC)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("needs an ISO date (2026-01-31) or date-time (2026-01-31T09:00:00Z)")
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    try:
        if is_date_only(value):
            day = dt.date.fromisoformat(value)
            return dt.datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO date (2026-01-31) or date-time (2026-01-31T09:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """An interval of time; None = unbounded on that side."""

    lo: dt.datetime | None = None
    lo_inclusive: bool = True
    hi: dt.datetime | None = None
    hi_inclusive: bool = False

    def contains(self, when: dt.datetime) -> bool:
        if self.lo is not None and (when < self.lo if self.lo_inclusive else when <= self.lo):
            return False
        if self.hi is not None and (when > self.hi if self.hi_inclusive else when >= self.hi):
            return False
        return True


def _day_after(text: str) -> dt.datetime:
    return parse_when(text) + dt.timedelta(days=1)


def date_bounds(op: str, value: Any, now: dt.datetime) -> Bounds:
    """The instants a date op accepts."""
    if op == "before":
        return Bounds(hi=parse_when(value), hi_inclusive=False)
    if op == "after":
        if is_date_only(value.strip()):
            return Bounds(lo=_day_after(value), lo_inclusive=True)
        return Bounds(lo=parse_when(value), lo_inclusive=False)
    if op == "between":
        low, high = value
        if is_date_only(high.strip()):
            return Bounds(lo=parse_when(low), hi=_day_after(high), hi_inclusive=False)
        return Bounds(lo=parse_when(low), hi=parse_when(high), hi_inclusive=True)
    if op == "more_than_days_ago":
        return Bounds(hi=now - dt.timedelta(days=value), hi_inclusive=False)
    if op == "less_than_days_ago":
        return Bounds(lo=now - dt.timedelta(days=value), lo_inclusive=False)
    raise ValueError(f"{op!r} is not a date op")


def _check_between_dates(value: Any) -> None:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError("'between' needs two dates [from, to]")
    low, high = parse_when(value[0]), parse_when(value[1])
    if low > high:
        raise ValueError("'between' needs the earlier date first")


def _check_scalar(value: Any, op: str) -> None:
    if isinstance(value, str):
        if not value:
            raise ValueError(f"'{op}' needs a non-empty value")
        if len(value) > 1000:
            raise ValueError("values are at most 1000 characters")
    elif not (is_number(value) or isinstance(value, bool)):
        raise ValueError(f"'{op}' needs a text, number or true/false value, not {_type_name(value)}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_list(value: Any, op: str, item_check) -> None:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{op}' needs a non-empty list as its value")
    if len(value) > MAX_LIST:
        raise ValueError(f"'{op}' takes at most {MAX_LIST} values")
    for item in value:
        item_check(item, "in")


def _check_text(value: Any, op: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{op}' on a text field needs non-empty text, not {_type_name(value)}")
    if len(value) > 1000:
        raise ValueError("values are at most 1000 characters")


def _check_number(value: Any, op: str) -> None:
    if not is_number(value):
        raise ValueError(f"'{op}' needs a number, not {_type_name(value)}")


def _check_owner(value: Any, op: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, int) and value > 0 or isinstance(value, str) and value):
        raise ValueError(f"'{op}' on owner needs a user id, a username or \"none\", not {_type_name(value)}")


def _check_days(value: Any, op: str) -> None:
    if not is_number(value) or value < 0 or value > MAX_DAYS:
        raise ValueError(f"'{op}' needs a number of days from 0 to {MAX_DAYS}, not {value!r}")


def check_value(kind: str, op: str, value: Any) -> None:
    """ValueError when `value` does not suit `op` on a field of `kind`."""
    if op in ("exists", "not_exists"):
        if value is not None:
            raise ValueError(f"'{op}' takes no value")
        return
    if kind == "date":
        if op in ("before", "after"):
            parse_when(value)
        elif op == "between":
            _check_between_dates(value)
        else:
            _check_days(value, op)
        return
    if op in ("in", "not_in"):
        item = {"text": _check_text, "number": _check_number, "owner": _check_owner, "json": _check_scalar}[kind]
        _check_list(value, op, item)
        return
    if op == "between":
        if not (isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)):
            raise ValueError("'between' needs two numbers [low, high]")
        if value[0] > value[1]:
            raise ValueError("'between' needs the low number first")
        return
    if op in ("gt", "gte", "lt", "lte"):
        _check_number(value, op)
        return
    if kind == "text" or op in ("contains", "not_contains", "starts_with"):
        _check_text(value, op)
    elif kind == "number":
        _check_number(value, op)
    elif kind == "owner":
        _check_owner(value, op)
    else:
        _check_scalar(value, op)


def glob_regex(pattern: str) -> str:
    """The regular expression (the same on Python, SQLite and PostgreSQL) for a visit pattern.

    ``*`` matches anything (slashes too); other characters match themselves, ASCII letters in
    either case. The pattern matches a path (``/pricing``), or a full URL's path when it starts
    with ``/``; a query string, a fragment and one trailing slash may follow.
    """
    parts = []
    for ch in pattern:
        if ch == "*":
            parts.append(".*")
        elif ch.isascii() and ch.isalpha():
            parts.append(f"[{ch.lower()}{ch.upper()}]")
        elif ch.isascii() and ch.isalnum():
            parts.append(ch)
        else:
            parts.append(re.escape(ch) if not ch.isalnum() else ch)
    body = "".join(parts)
    prefix = r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^/?#]*)?" if pattern.startswith("/") else ""
    return rf"\A{prefix}{body}/?([?#].*)?\Z"


# --- the schema -----------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Days = Annotated[int, Field(strict=True, ge=1, le=MAX_DAYS)]
Name = Annotated[str, Field(min_length=1, max_length=255)]


class FieldCondition(_Strict):
    field: str
    op: str
    value: Any = Field(default=None, validate_default=True)

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        field_spec(name)
        return name

    @field_validator("op")
    @classmethod
    def _op_fits(cls, op: str, info: ValidationInfo) -> str:
        if op not in ALL_OPS:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(ALL_OPS)}")
        name = info.data.get("field")
        if name is not None:
            kind = cls.spec_of(name).kind
            if op not in FIELD_KIND_OPS[kind]:
                raise ValueError(f"'{op}' does not apply to {name!r} ({kind} field); use one of "
                                 f"{', '.join(FIELD_KIND_OPS[kind])}")
        return op

    @field_validator("value")
    @classmethod
    def _value_fits(cls, value: Any, info: ValidationInfo) -> Any:
        name, op = info.data.get("field"), info.data.get("op")
        if name is not None and op is not None:
            check_value(cls.spec_of(name).kind, op, value)
        return value

    @classmethod
    def spec_of(cls, name: str) -> FieldSpec:
        return field_spec(name)

    @property
    def spec(self) -> FieldSpec:
        return self.spec_of(self.field)


class PropertyCondition(FieldCondition):
    """A condition on an event's properties: ``{"field": "properties.plan", "op": "eq", ...}``."""

    @field_validator("field")
    @classmethod
    def _known_field(cls, name: str) -> str:
        property_spec(name)
        return name

    @classmethod
    def spec_of(cls, name: str) -> FieldSpec:
        return property_spec(name)


class Count(_Strict):
    op: Literal["gte", "lte", "eq"]
    value: Annotated[int, Field(strict=True, ge=0, le=1_000_000)]


class _Windowed(_Strict):
    within_days: Days | None = None
    between: tuple[str, str] | None = None

    @field_validator("between")
    @classmethod
    def _dates(cls, value):
        if value is not None:
            _check_between_dates(list(value))
        return value

    @model_validator(mode="after")
    def _one_window(self):
        if self.within_days is not None and self.between is not None:
            raise ValueError("use either 'within_days' or 'between', not both")
        return self

    def window(self, now: dt.datetime) -> Bounds:
        if self.within_days is not None:
            return Bounds(lo=now - dt.timedelta(days=self.within_days), lo_inclusive=True)
        if self.between is not None:
            return date_bounds("between", list(self.between), now)
        return Bounds()


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """Which events a behavioural condition looks at."""

    name: str | None = None
    type: str | None = None
    where: tuple[PropertyCondition, ...] = ()
    url_glob: str | None = None


class Performed(_Windowed):
    performed: Name
    where: list[PropertyCondition] = Field(default_factory=list, max_length=50)
    count: Count | None = None

    def events(self) -> EventSpec:
        return EventSpec(name=self.performed, where=tuple(self.where))


class NotPerformed(_Windowed):
    not_performed: Name
    where: list[PropertyCondition] = Field(default_factory=list, max_length=50)

    def events(self) -> EventSpec:
        return EventSpec(name=self.not_performed, where=tuple(self.where))


FIRST_LAST_OPS = ("before", "after", "between", "more_than_days_ago", "less_than_days_ago")


class _FirstLast(_Strict):
    where: list[PropertyCondition] = Field(default_factory=list, max_length=50)
    op: str
    value: Any = Field(default=None, validate_default=True)

    @field_validator("op")
    @classmethod
    def _op(cls, op: str) -> str:
        if op not in FIRST_LAST_OPS:
            raise ValueError(f"unknown operator {op!r}; use one of {', '.join(FIRST_LAST_OPS)}")
        return op

    @field_validator("value")
    @classmethod
    def _value(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op is not None:
            check_value("date", op, value)
        return value

    def bounds(self, now: dt.datetime) -> Bounds:
        return date_bounds(self.op, self.value, now)


class FirstPerformed(_FirstLast):
    first_performed: Name

    def events(self) -> EventSpec:
        return EventSpec(name=self.first_performed, where=tuple(self.where))


class LastPerformed(_FirstLast):
    last_performed: Name

    def events(self) -> EventSpec:
        return EventSpec(name=self.last_performed, where=tuple(self.where))


class Visited(_Windowed):
    visited: Annotated[str, Field(min_length=1, max_length=500)]
    count: Count | None = None

    @field_validator("visited")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError("a URL pattern has no spaces or control characters")
        return value

    def events(self) -> EventSpec:
        return EventSpec(type=PAGE_TYPE, url_glob=self.visited)


def _eq(prop: str, value: str | None) -> tuple[PropertyCondition, ...]:
    if value is None:
        return ()
    return (PropertyCondition(field=f"properties.{prop}", op="eq", value=value),)


OptionalName = Annotated[str, Field(min_length=1, max_length=255)] | None


class MagnetDownloaded(_Windowed):
    magnet_downloaded: OptionalName
    count: Count | None = None

    def events(self) -> EventSpec:
        return EventSpec(name=MAGNET_EVENT, where=_eq(MAGNET_PROPERTY, self.magnet_downloaded))


class FormSubmitted(_Windowed):
    form_submitted: OptionalName
    count: Count | None = None

    def events(self) -> EventSpec:
        return EventSpec(name=FORM_EVENT, where=_eq(FORM_PROPERTY, self.form_submitted))


class EmailClicked(_Windowed):
    email_clicked: OptionalName
    count: Count | None = None

    def events(self) -> EventSpec:
        return EventSpec(name=EMAIL_CLICKED_EVENT, where=_eq(EMAIL_PROPERTY, self.email_clicked))


class EmailReceived(_Windowed):
    email_received: OptionalName
    count: Count | None = None

    def events(self) -> EventSpec:
        return EventSpec(name=EMAIL_RECEIVED_EVENT, where=_eq(EMAIL_PROPERTY, self.email_received))


class ConsentCondition(_Strict):
    consent: Annotated[str, Field(min_length=1, max_length=100)]
    status: Literal["granted", "withdrawn", "none"]


Slug = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[-a-zA-Z0-9_]+$")]


class InSegment(_Strict):
    in_segment: Slug


class NotInSegment(_Strict):
    not_in_segment: Slug


class AllGroup(_Strict):
    all: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)


class AnyGroup(_Strict):
    any: list[Condition] = Field(min_length=1, max_length=MAX_CONDITIONS)


class NotGroup(_Strict):
    not_: Condition = Field(alias="not")


BEHAVIOUR_KINDS = (Performed, NotPerformed, FirstPerformed, LastPerformed, Visited, MagnetDownloaded,
                   FormSubmitted, EmailClicked, EmailReceived)
# The key that says what a condition is, in the order they are looked for.
KINDS: dict[str, type[_Strict]] = {
    "all": AllGroup, "any": AnyGroup, "not": NotGroup, "field": FieldCondition,
    "performed": Performed, "not_performed": NotPerformed, "first_performed": FirstPerformed,
    "last_performed": LastPerformed, "visited": Visited, "magnet_downloaded": MagnetDownloaded,
    "form_submitted": FormSubmitted, "email_clicked": EmailClicked, "email_received": EmailReceived,
    "consent": ConsentCondition, "in_segment": InSegment, "not_in_segment": NotInSegment,
}
_MODEL_KIND = {model: key for key, model in KINDS.items()}


def _tag(key: str) -> str:
    return f"<{key}>"


def _kind_of(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in KINDS:
            if key in value:
                return _tag(key)
        return None
    kind = _MODEL_KIND.get(type(value))
    return _tag(kind) if kind else None


CONDITION_HELP = ("a condition is an object with one of the keys " + ", ".join(KINDS) +
                  " (all/any/not are groups)")

Condition = Annotated[
    Union[tuple(Annotated[model, Tag(_tag(key))] for key, model in KINDS.items())],  # type: ignore[misc]
    Discriminator(_kind_of, custom_error_type="unknown_condition", custom_error_message=CONDITION_HELP),
]

for _model in (AllGroup, AnyGroup, NotGroup):
    _model.model_rebuild()

_CONDITION = TypeAdapter(Condition)


class Filter(_Strict):
    """A parsed, valid filter: `root` is its top condition."""

    version: Literal[1] = VERSION
    root: Condition


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith("<") and part.endswith(">"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    if kind == "missing":
        return "is required"
    if kind == "too_short" and isinstance(error.get("input"), list) and not error["input"]:
        return "must not be empty: a group needs at least one condition"
    if error["loc"][-1:] == ("within_days",):
        return f"needs a whole number of days from 1 to {MAX_DAYS}, not {error.get('input')!r}"
    return msg.removeprefix("Value error, ")


def _from_validation(exc: ValidationError, prefix: tuple = ()) -> FilterError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = _path(prefix + tuple(first["loc"]))
    message = _message(first)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return FilterError(message, path=path)


def walk(cond: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every condition under `cond` (itself first) with its path."""
    yield path, cond
    if isinstance(cond, AllGroup):
        for i, child in enumerate(cond.all):
            yield from walk(child, f"{path}.all[{i}]" if path else f"all[{i}]")
    elif isinstance(cond, AnyGroup):
        for i, child in enumerate(cond.any):
            yield from walk(child, f"{path}.any[{i}]" if path else f"any[{i}]")
    elif isinstance(cond, NotGroup):
        yield from walk(cond.not_, f"{path}.not" if path else "not")


def _depth(cond: Any) -> int:
    if isinstance(cond, (AllGroup, AnyGroup)):
        return 1 + max(_depth(c) for c in (cond.all if isinstance(cond, AllGroup) else cond.any))
    if isinstance(cond, NotGroup):
        return 1 + _depth(cond.not_)
    return 1


def filter_parse(data: object, *, workspace_id: int | None = None, segment_slug: str | None = None) -> Filter:
    """The valid filter `data` describes, or FilterError naming the bad part.

    With `workspace_id`, segments it refers to must exist in that workspace and the references
    must not lead back to `segment_slug` (the segment this definition is for, when known) or
    form any other cycle.
    """
    if isinstance(data, Filter):
        flt = data
    else:
        if not isinstance(data, dict):
            raise FilterError(f"a filter is a JSON object such as {{\"version\": 1, \"all\": [...]}}, "
                              f"not {_type_name(data)}")
        body = dict(data)
        version = body.pop("version", VERSION)
        if isinstance(version, bool) or version != VERSION:
            raise FilterError(f"unsupported filter version {version!r}; this LeadFlow reads version {VERSION}",
                              path="version")
        if not body:
            raise FilterError("a filter needs a condition: " + CONDITION_HELP)
        try:
            root = _CONDITION.validate_python(body)
        except ValidationError as exc:
            raise _from_validation(exc) from None
        flt = Filter(root=root)
    nodes = list(walk(flt.root))
    if len(nodes) > MAX_CONDITIONS:
        raise FilterError(f"a filter has at most {MAX_CONDITIONS} conditions, this one has {len(nodes)}")
    if _depth(flt.root) > MAX_DEPTH:
        raise FilterError(f"groups nest at most {MAX_DEPTH} levels deep")
    if workspace_id is not None:
        _check_references(flt, workspace_id=workspace_id, segment_slug=segment_slug)
    return flt


def filter_dump(flt: Filter) -> dict:
    """The canonical JSON of a filter (what is stored): version first, then the root condition."""
    return {"version": flt.version, **_CONDITION.dump_python(flt.root, by_alias=True, exclude_unset=True,
                                                            mode="json")}


# --- what a filter depends on ---------------------------------------------------------------------

def filter_segment_refs(flt: Filter) -> set[str]:
    """Slugs of the segments the filter refers to (in_segment / not_in_segment)."""
    refs = set()
    for _, cond in walk(flt.root):
        if isinstance(cond, InSegment):
            refs.add(cond.in_segment)
        elif isinstance(cond, NotInSegment):
            refs.add(cond.not_in_segment)
    return refs


def filter_time_sensitive(flt: Filter) -> bool:
    """Whether the result can change as time passes with no new data: some condition uses a
    window relative to now (within_days, more/less_than_days_ago). Segments referred to are not
    followed (their own membership changes are carried on by the membership engine)."""
    for _, cond in walk(flt.root):
        if isinstance(cond, _Windowed) and cond.within_days is not None:
            return True
        if isinstance(cond, (FieldCondition, _FirstLast)) and cond.op in ("more_than_days_ago",
                                                                            "less_than_days_ago"):
            return True
    return False


def filter_event_names(flt: Filter) -> set[str] | None:
    """The event names whose arrival can change a behavioural condition; None means any event
    (page visits match on the URL, whatever the event's name).

    Profile fields, scores, consent and segment membership are state, not events: a contact whose
    row, consents or memberships changed must be re-evaluated whatever this returns.
    """
    names: set[str] = set()
    for _, cond in walk(flt.root):
        if isinstance(cond, BEHAVIOUR_KINDS):
            spec = cond.events()
            if spec.name is None:
                return None
            names.add(spec.name)
    return names


def _check_references(flt: Filter, *, workspace_id: int, segment_slug: str | None) -> None:
    from leadflow.segments.models import Segment

    refs: list[tuple[str, str]] = []
    for path, cond in walk(flt.root):
        if isinstance(cond, InSegment):
            refs.append((f"{path}.in_segment" if path else "in_segment", cond.in_segment))
        elif isinstance(cond, NotInSegment):
            refs.append((f"{path}.not_in_segment" if path else "not_in_segment", cond.not_in_segment))
    if not refs:
        return
    known = {s.slug: s for s in Segment.objects.filter(workspace_id=workspace_id)
             .only("slug", "kind", "definition")}
    for path, slug in refs:
        if slug not in known:
            raise FilterError(f"there is no segment {slug!r} in this workspace", path=path)
        if segment_slug is not None and slug == segment_slug:
            raise FilterError(f"segment {slug!r} refers back to itself", path=path)

    def refs_of(slug: str) -> set[str]:
        segment = known.get(slug)
        if segment is None or segment.kind != "dynamic" or not segment.definition:
            return set()
        try:
            return filter_segment_refs(filter_parse(segment.definition))
        except FilterError:
            return set()

    for path, slug in refs:
        # Depth-first search for a way from `slug` back to the segment being defined, or any cycle.
        stack = [(slug, (slug,))]
        seen: set[str] = set()
        while stack:
            current, trail = stack.pop()
            for nxt in sorted(refs_of(current)):
                if segment_slug is not None and nxt == segment_slug:
                    chain = " → ".join((segment_slug,) + trail + (nxt,))
                    raise FilterError(f"segment {segment_slug!r} refers back to itself through {chain}",
                                      path=path)
                if nxt in trail:
                    chain = " → ".join(trail[trail.index(nxt):] + (nxt,))
                    raise FilterError(f"segment {nxt!r} refers back to itself through {chain}", path=path)
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + (nxt,)))
