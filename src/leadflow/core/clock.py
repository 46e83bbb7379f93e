"""The injected clock: every scheduling decision reads `now()` from here.

Production uses the real UTC time. Tests and simulations install a `FrozenClock` (or any
callable) with `use()` so a 90-day nurture runs in seconds and assertions are exact.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator

UTC = dt.timezone.utc


def _system_now() -> dt.datetime:
    return dt.datetime.now(UTC)


_source: Callable[[], dt.datetime] = _system_now


def parse_iso(text: str) -> dt.datetime:
    """An ISO 8601 date or date-time as aware UTC (a naive value is taken as UTC; `Z` accepted).

    Raises ValueError for anything else.
    """
    value = text.strip()
    if value[-1:] in ("Z", "z"):
        value = value[:-1] + "+00:00"
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return _source()


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime):
        if start.tzinfo is None:
            raise ValueError("FrozenClock needs a timezone-aware start time")
        self.current = start.astimezone(UTC)

    def __call__(self) -> dt.datetime:
        return self.current

    def advance(self, **delta: float) -> dt.datetime:
        self.current += dt.timedelta(**delta)
        return self.current

    def set(self, when: dt.datetime) -> None:
        self.current = when.astimezone(UTC)


@contextlib.contextmanager
def use(source: Callable[[], dt.datetime]) -> Iterator[Callable[[], dt.datetime]]:
    """Install `source` as the clock for the duration of the block."""
    global _source
    previous = _source
    _source = source
    try:
        yield source
    finally:
        _source = previous
