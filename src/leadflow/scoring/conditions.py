"""The rule condition language: typed JSON, validated with pydantic, evaluated as plain functions.

Fit conditions look at a contact::

    {"field": "title", "op": "contains", "value": "director"}
    {"all": [cond, …]}   {"any": [cond, …]}

Engagement conditions look at one event::

    {"event": "Asset Downloaded"}
    {"type": "page", "url_contains": "/pricing"}
    {"event": "Feature Used", "properties": [{"field": "feature", "op": "in", "value": ["export", "api"]}]}
    {"any": [matcher, …]}

Text comparisons ignore case. A missing value matches only `neq`, `not_contains`, `not_in` and
`not_exists`. Nothing here touches the database.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

TEXT_OPS = ("eq", "neq", "contains", "not_contains", "starts_with")
LIST_OPS = ("in", "not_in")
PRESENCE_OPS = ("exists", "not_exists")
NUMBER_OPS = ("gt", "gte", "lt", "lte")
OPS = TEXT_OPS + LIST_OPS + PRESENCE_OPS + NUMBER_OPS + ("between",)

CONTACT_FIELDS = ("first_name", "last_name", "email", "title", "country", "timezone", "source_channel",
                  "email_domain", "email_domain_type", "company.name", "company.domain")
FIELD_PREFIXES = ("traits.", "company.traits.")
EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")

# Mailbox providers anyone can sign up to: an address there says nothing about an employer.
FREE_MAIL_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "outlook.com", "live.com", "msn.com", "icloud.com", "me.com",
    "mac.com", "aol.com", "proton.me", "protonmail.com", "pm.me", "mail.ru", "inbox.ru", "list.ru",
    "bk.ru", "zoho.com", "zohomail.com", "tutanota.com", "tuta.io", "fastmail.com", "hey.com",
    "mail.com", "email.com", "qq.com", "163.com", "126.com", "sina.com", "naver.com", "daum.net",
    "rediffmail.com", "web.de", "t-online.de", "freenet.de", "orange.fr", "wanadoo.fr", "free.fr",
    "laposte.net", "sfr.fr", "libero.it", "virgilio.it", "seznam.cz", "wp.pl", "o2.pl", "onet.pl",
    "interia.pl", "rambler.ru", "ukr.net", "bigpond.com", "optusnet.com.au", "comcast.net",
    "verizon.net", "att.net", "sbcglobal.net", "cox.net", "charter.net", "earthlink.net", "ymail.com",
    "rocketmail.com", "hushmail.com", "duck.com", "mailbox.org", "posteo.de", "gmx.com",
})
# Providers with one domain per country (yahoo.co.uk, hotmail.fr, gmx.de, yandex.ru, …).
FREE_MAIL_PREFIXES = frozenset({"yahoo", "hotmail", "gmx", "yandex", "live", "outlook", "windowslive"})

OPENS_REJECTED = ("email opens never count on their own: privacy proxies (Apple Mail Privacy Protection) "
                  "and link scanners open mail automatically, so opens inflate scores; score "
                  "'Email Clicked' instead")


class ConditionError(ValueError):
    """A condition that is not valid; the message names the bad part (e.g. `condition.all[1].op`)."""


def email_domain_type(email: str) -> str | None:
    """"free" (a mailbox provider), "business", or None without an email."""
    domain = email.rpartition("@")[2] if email and "@" in email else ""
    return _domain_type(domain) if domain else None


@functools.lru_cache(maxsize=65536)
def _domain_type(domain: str) -> str | None:
    domain = domain.strip().lower()
    if not domain:
        return None
    if domain in FREE_MAIL_DOMAINS or domain.split(".", 1)[0] in FREE_MAIL_PREFIXES:
        return "free"
    return "business"


# Validation -----------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = str | int | float | bool


class FieldCondition(_Strict):
    field: str
    op: Literal[OPS]  # type: ignore[valid-type]
    value: Scalar | list[Scalar] | None = None

    @field_validator("field")
    @classmethod
    def _field_named(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must name a field")
        return value

    @model_validator(mode="after")
    def _value_fits_op(self):
        op, value = self.op, self.value
        if op in PRESENCE_OPS:
            if value is not None:
                raise ValueError(f"'{op}' takes no value")
        elif op in LIST_OPS:
            if not isinstance(value, list) or not value:
                raise ValueError(f"'{op}' needs a non-empty list as its value")
        elif op == "between":
            if not (isinstance(value, list) and len(value) == 2 and all(_number(v) is not None for v in value)):
                raise ValueError("'between' needs a value of two numbers [low, high]")
            if _number(value[0]) > _number(value[1]):
                raise ValueError("'between' needs the low number first")
        elif op in NUMBER_OPS:
            if isinstance(value, list) or _number(value) is None:
                raise ValueError(f"'{op}' needs a number as its value")
        else:
            if value is None or isinstance(value, list) or (isinstance(value, str) and not value.strip()):
                raise ValueError(f"'{op}' needs a single non-empty value")
        return self


class EventMatcher(_Strict):
    event: str | None = None
    type: Literal[EVENT_TYPES] | None = None  # type: ignore[valid-type]
    url_contains: str | None = None
    properties: list[FieldCondition] = []

    @model_validator(mode="after")
    def _says_something(self):
        if not (self.event or self.type or self.url_contains):
            raise ValueError("an engagement condition needs 'event', 'type' or 'url_contains'")
        if self.event is not None and not self.event.strip():
            raise ValueError("'event' must not be empty")
        if self.event and self.event.strip().casefold() == "email opened":
            raise ValueError(OPENS_REJECTED)
        return self


def _pydantic_message(exc: ValidationError, where: str) -> str:
    parts = []
    for error in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "literal_error" and error["loc"][-1:] == ("op",):
            message = f"unknown operator {error.get('input')!r}; use one of {', '.join(OPS)}"
        elif error["type"] == "extra_forbidden":
            message = f"unknown key {error['loc'][-1]!r}"
        parts.append(f"{where}{loc}: {message}")
    return "; ".join(parts)


def _group(raw: dict, where: str, leaf, *, depth: int) -> dict:
    if depth > 8:
        raise ConditionError(f"{where}: groups nest too deeply (8 levels at most)")
    (key, members), = raw.items()
    if not isinstance(members, list) or not members:
        raise ConditionError(f"{where}.{key}: must be a non-empty list of conditions")
    return {key: [leaf(m, f"{where}.{key}[{i}]", depth + 1) for i, m in enumerate(members)]}


def _fit(raw: Any, where: str, depth: int = 0) -> dict:
    if not isinstance(raw, dict):
        raise ConditionError(f"{where}: must be an object such as "
                             '{"field": "title", "op": "contains", "value": "director"}')
    if raw.keys() & {"all", "any"}:
        if len(raw) != 1:
            raise ConditionError(f"{where}: a group has exactly one key, 'all' or 'any'")
        return _group(raw, where, _fit, depth=depth)
    try:
        cond = FieldCondition.model_validate(raw)
    except ValidationError as exc:
        raise ConditionError(_pydantic_message(exc, where)) from None
    field = cond.field
    if field not in CONTACT_FIELDS and not any(field.startswith(p) and len(field) > len(p) for p in FIELD_PREFIXES):
        raise ConditionError(f"{where}.field: unknown field {field!r}; use one of {', '.join(CONTACT_FIELDS)}, "
                             "traits.NAME or company.traits.NAME")
    if field == "email_domain_type" and cond.op in ("eq", "neq") and str(cond.value).lower() not in ("free", "business"):
        raise ConditionError(f"{where}.value: email_domain_type is 'free' or 'business'")
    return cond.model_dump(exclude_none=True)


def _matcher(raw: Any, where: str, depth: int = 0) -> dict:
    if not isinstance(raw, dict):
        raise ConditionError(f"{where}: must be an object such as {{\"event\": \"Asset Downloaded\"}}")
    if "any" in raw:
        if depth:
            raise ConditionError(f"{where}: 'any' groups do not nest in engagement conditions")
        if len(raw) != 1:
            raise ConditionError(f"{where}: a group has exactly one key, 'any'")
        return _group(raw, where, _matcher, depth=depth)
    if "all" in raw:
        raise ConditionError(f"{where}: engagement conditions match one event; use 'properties' to "
                             "require several things of it, or 'any' for alternatives")
    try:
        matcher = EventMatcher.model_validate(raw)
    except ValidationError as exc:
        raise ConditionError(_pydantic_message(exc, where)) from None
    return matcher.model_dump(exclude_none=True, exclude_defaults=True)


def condition_validate(*, kind: str, condition: Any) -> dict:
    """The condition in canonical form, or ConditionError naming the bad part."""
    if kind == "fit":
        return _fit(condition, "condition")
    if kind == "engagement":
        return _matcher(condition, "condition")
    raise ConditionError(f"kind: must be 'fit' or 'engagement', not {kind!r}")


# Evaluation -----------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace(",", ""))
        except ValueError:
            return None
    return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().casefold()


def _equal(actual: Any, expected: Any) -> bool:
    a, b = _number(actual), _number(expected)
    if a is not None and b is not None:
        return a == b
    return _text(actual) == _text(expected)


def _missing(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def op_test(op: str, actual: Any, expected: Any) -> bool:
    """Whether `actual` (a contact field, trait or event property) passes `op` with `expected`."""
    if op == "exists":
        return not _missing(actual)
    if op == "not_exists":
        return _missing(actual)
    negative = op in ("neq", "not_contains", "not_in")
    if _missing(actual):
        return negative
    values = actual if isinstance(actual, list) else [actual]
    if op in ("eq", "neq"):
        hit = any(_equal(v, expected) for v in values)
    elif op in ("contains", "not_contains"):
        hit = any(_text(expected) in _text(v) for v in values)
    elif op == "starts_with":
        hit = any(_text(v).startswith(_text(expected)) for v in values)
    elif op in ("in", "not_in"):
        hit = any(_equal(v, e) for v in values for e in expected)
    else:
        numbers = [n for n in (_number(v) for v in values) if n is not None]
        if op == "between":
            low, high = _number(expected[0]), _number(expected[1])
            return any(low <= n <= high for n in numbers)
        limit = _number(expected)
        test = {"gt": limit.__lt__, "gte": limit.__le__, "lt": limit.__gt__, "lte": limit.__ge__}[op]
        return any(test(n) for n in numbers)
    return not hit if negative else hit


def _path(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


# Plain keys of the facts dict (scoring.engine.contact_facts; it precomputes email_domain_type).
FACT_KEYS = frozenset({"first_name", "last_name", "email", "title", "country", "timezone", "source_channel",
                       "company_name", "company_domain"})


def contact_value(contact: dict, field: str) -> Any:
    """`contact` is a flat dict (scoring.engine.contact_facts): fields, traits, company_*."""
    if field.startswith("traits."):
        return _path(contact.get("traits") or {}, field[7:])
    if field.startswith("company.traits."):
        return _path(contact.get("company_traits") or {}, field[15:])
    if field == "company.name":
        return contact.get("company_name")
    if field == "company.domain":
        return contact.get("company_domain")
    if field == "email_domain":
        email = contact.get("email") or ""
        return email.rpartition("@")[2].lower() if "@" in email else None
    if field == "email_domain_type":
        if "email_domain_type" in contact:
            return contact["email_domain_type"]
        return email_domain_type(contact.get("email") or "")
    return contact.get(field)


def fit_matches(condition: dict, contact: dict) -> bool:
    return fit_compile(condition)(contact)


def _getter(field: str):
    if field.startswith("traits.") or field.startswith("company.traits."):
        source, dotted = ("traits", field[7:]) if field.startswith("traits.") else ("company_traits", field[15:])
        if "." not in dotted:
            return lambda facts: (facts.get(source) or {}).get(dotted)
        return lambda facts: _path(facts.get(source) or {}, dotted)
    key = {"company.name": "company_name", "company.domain": "company_domain"}.get(field, field)
    if key in FACT_KEYS:
        return lambda facts: facts.get(key)
    return lambda facts: contact_value(facts, field)


def _leaf_compile(op: str, expected: Any, get=None):
    """A one-argument test equal to `op_test(op, value, expected)`, with `expected` prepared once."""
    if op in ("eq", "neq", "in", "not_in"):
        wanted = expected if op in LIST_OPS else [expected]
        texts = frozenset(_text(e) for e in wanted)
        numbers = frozenset(n for n in (_number(e) for e in wanted) if n is not None)

        def hit(value):
            for item in (value if isinstance(value, list) else (value,)):
                if numbers:
                    n = _number(item)
                    if n is not None and n in numbers:
                        return True
                    if n is not None and _text(item) not in texts:
                        continue
                if (item.strip().casefold() if isinstance(item, str) else _text(item)) in texts:
                    return True
            return False
    elif op in ("contains", "not_contains", "starts_with"):
        needle = _text(expected)
        if op == "starts_with":
            def hit(value):
                return any(_text(v).startswith(needle) for v in (value if isinstance(value, list) else (value,)))
        else:
            def hit(value):
                if isinstance(value, str):
                    return needle in value.casefold()
                return any(needle in _text(v) for v in (value if isinstance(value, list) else (value,)))
    else:
        return lambda value: op_test(op, value, expected)
    negative = op in ("neq", "not_contains", "not_in")

    def test(value):
        if value is None or value == "" or value == [] or value == {}:
            return negative
        return not hit(value) if negative else hit(value)
    return test


def fit_compile(condition: dict):
    """The condition as a function of a contact's facts (scoring.engine.contact_facts); compile a
    rule once per batch and call it per contact."""
    if "all" in condition:
        parts = [fit_compile(c) for c in condition["all"]]
        return lambda facts: all(p(facts) for p in parts)
    if "any" in condition:
        members = condition["any"]
        fields = {c.get("field") for c in members}
        if len(fields) == 1 and None not in fields:  # e.g. title contains any of several words
            get = _getter(members[0]["field"])
            tests = [_leaf_compile(c["op"], c.get("value")) for c in members]
            return lambda facts: (lambda value: any(t(value) for t in tests))(get(facts))
        parts = [fit_compile(c) for c in members]
        return lambda facts: any(p(facts) for p in parts)
    get, test = _getter(condition["field"]), _leaf_compile(condition["op"], condition.get("value"))
    return lambda facts: test(get(facts))


def event_url(event) -> str:
    context = event.context if isinstance(event.context, dict) else {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    props = event.properties if isinstance(event.properties, dict) else {}
    return str(page.get("url") or props.get("url") or page.get("path") or props.get("path") or "")


def event_matches(condition: dict, event) -> bool:
    """Whether one event (anything with .type, .event, .properties, .context) matches."""
    if "any" in condition:
        return any(event_matches(c, event) for c in condition["any"])
    if "event" in condition and _text(event.event or "") != _text(condition["event"]):
        return False
    if "type" in condition and event.type != condition["type"]:
        return False
    if "url_contains" in condition and _text(condition["url_contains"]) not in _text(event_url(event)):
        return False
    props = event.properties if isinstance(event.properties, dict) else {}
    return all(op_test(c["op"], _path(props, c["field"]), c.get("value"))
               for c in condition.get("properties", ()))
