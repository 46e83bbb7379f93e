"""Keyset (cursor) pagination: stable under inserts, one query per page.

A page is ordered by a tuple of columns that ends in a unique one, e.g. `("-pk",)` or
`("timestamp", "id")`. The cursor carries the ordering and the last item's values of those
columns, base64-encoded; clients treat it as opaque and pass back the `next` value they got.
"""

from __future__ import annotations

import base64
import json

from django.core.exceptions import ValidationError
from django.db.models import Q
from ninja.errors import HttpError

MAX_LIMIT = 500
BAD_CURSOR = "next: cursor is not valid; pass the `next` value of a previous page of the same list"


def _field(model, name: str):
    return model._meta.pk if name == "pk" else model._meta.get_field(name)


def _dump(value) -> object:
    return value.isoformat() if hasattr(value, "isoformat") else value


def encode(order: tuple[str, ...], values: list) -> str:
    raw = json.dumps({"o": ",".join(order), "v": [_dump(v) for v in values]}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(cursor: str | None, *, model, order: tuple[str, ...]) -> list | None:
    """The last item's values, typed, or None for the first page; HttpError 400 if malformed."""
    if not cursor:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        if data["o"] != ",".join(order) or len(data["v"]) != len(order):
            raise ValueError("cursor of another list")
        values = [_field(model, name.lstrip("-")).to_python(raw) for name, raw in zip(order, data["v"])]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, ValidationError):
        raise HttpError(400, BAD_CURSOR) from None
    if any(v is None for v in values):
        raise HttpError(400, BAD_CURSOR)
    return values


def _after(order: tuple[str, ...], values: list) -> Q:
    """Rows strictly after `values` in `order`: (a > x) or (a = x and b > y) or …"""
    condition = Q()
    for index, name in enumerate(order):
        column = name.lstrip("-")
        op = "lt" if name.startswith("-") else "gt"
        step = Q(**{f"{column}__{op}": values[index]})
        for earlier, value in zip(order[:index], values[:index]):
            step &= Q(**{earlier.lstrip("-"): value})
        condition |= step
    return condition


def page(qs, *, cursor: str | None, limit: int, order: tuple[str, ...] = ("-pk",)):
    """Items of one page and the cursor of the next (None at the end).

    `order` must end in a unique column so that the order is total.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise HttpError(400, f"limit must be between 1 and {MAX_LIMIT}")
    after = decode(cursor, model=qs.model, order=order)
    if after is not None:
        qs = qs.filter(_after(order, after))
    items = list(qs.order_by(*order)[: limit + 1])
    if len(items) <= limit:
        return items, None
    items = items[:limit]
    last = items[-1]
    return items, encode(order, [getattr(last, name.lstrip("-")) for name in order])
