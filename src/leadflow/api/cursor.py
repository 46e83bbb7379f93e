"""Cursor pagination over id-ordered querysets: stable under inserts, one query per page."""

from __future__ import annotations

import base64

from ninja.errors import HttpError


def encode(value: int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "cursor is not valid; use the `next` value of a previous page") from None


def page(qs, *, cursor: str | None, limit: int, descending: bool = False, field: str = "pk"):
    """Items of one page and the cursor of the next (None at the end)."""
    if not 1 <= limit <= 500:
        raise HttpError(400, "limit must be between 1 and 500")
    after = decode(cursor)
    if after is not None:
        qs = qs.filter(**{f"{field}__lt" if descending else f"{field}__gt": after})
    qs = qs.order_by(f"-{field}" if descending else field)
    items = list(qs[: limit + 1])
    more = len(items) > limit
    items = items[:limit]
    return items, (encode(getattr(items[-1], field if field != "pk" else "pk")) if more else None)
