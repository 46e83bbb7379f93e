"""Preview an unsaved filter: how many contacts match now, and a few of them.

A preview answers while the marketer types, so it has a time budget. The exact count comes from
one query (the total rides along with the sample as a window count). When that query has not
finished within the budget (a heavy behavioural filter on millions of contacts), it is cancelled
(`statement_timeout` on PostgreSQL, a progress handler on SQLite) and the count is estimated from
a sample of contacts (those whose hashed id falls in one of k buckets): the filter is decided for
each of them in one pass, and the matching share, scaled to the workspace, is returned with a 95%
(Wilson) interval and marked as an estimate. Saving the segment always evaluates it exactly.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

from django.db import DatabaseError, connection, transaction
from django.db.models import BigIntegerField, BooleanField, Case, Count, ExpressionWrapper, F, Value, When, Window
from django.db.models.functions import Mod

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.segments.compiler import filter_q, per_row
from leadflow.segments.language import filter_parse

# How long the exact count may take before the estimate is used instead.
EXACT_BUDGET_SECONDS = 0.5
# The estimate evaluates the filter on about this many contacts.
SAMPLE_TARGET = 30_000


class _OverBudget(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """Cancel the queries run inside after `seconds` (raises _OverBudget); 0: estimate at once."""
    if seconds <= 0:
        raise _OverBudget
    if connection.vendor == "postgresql":
        try:
            # A savepoint: a cancelled query rolls back to it (and so does the setting); after a
            # query that finished, the caller's own timeout is put back.
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("SELECT current_setting('statement_timeout')")
                    previous = cursor.fetchone()[0]
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{max(1, int(seconds * 1000))}ms"])
                yield
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [previous])
        except DatabaseError as exc:
            if getattr(getattr(exc, "__cause__", None), "sqlstate", None) == "57014":  # query_canceled
                raise _OverBudget from exc
            raise
        return
    connection.ensure_connection()
    deadline = time.perf_counter() + seconds
    raw = connection.connection
    raw.set_progress_handler(lambda: 1 if time.perf_counter() > deadline else 0, 10_000)
    try:
        yield
    except DatabaseError as exc:
        if "interrupted" in str(exc):
            raise _OverBudget from exc
        raise
    finally:
        raw.set_progress_handler(None, 0)


# Multiplicative hashing (Knuth): id * M mod the prime 2^31 - 1, M ≈ p / golden ratio. Taking
# `id % k` directly would alias with anything assigned round-robin by id (an import's companies,
# a generator's categories) and sample a skewed slice; the hashed bucket spreads consecutive ids.
_PRIME = 2_147_483_647
_MULTIPLIER = 1_327_217_885


def _bucket(step: int):
    def big(value: int) -> Value:
        return Value(value, output_field=BigIntegerField())

    # Every step typed bigint: an untyped Mod is a float to Django, which PostgreSQL would then be
    # asked to take modulo as numeric (several times slower over a million rows).
    hashed = ExpressionWrapper(Mod(F("id"), big(_PRIME), output_field=BigIntegerField()) * big(_MULTIPLIER),
                               output_field=BigIntegerField())
    return Mod(Mod(hashed, big(_PRIME), output_field=BigIntegerField()), big(step), output_field=BigIntegerField())


_FIELDS = ("id", "email", "first_name", "last_name", "company__name")


def _rows(queryset, limit: int) -> list[dict]:
    return list(queryset.annotate(total=Window(Count("pk"))).order_by("-id")
                .values(*_FIELDS, "total")[:max(limit, 1)])


def _estimate(contacts, condition, *, total: int, limit: int) -> tuple[int, int, list[dict]]:
    """(sampled, hits, the newest `limit` sampled matches): the filter decided for each sampled
    contact in one pass over the sample, which comes back as (id, matched) pairs.

    One pass, not a count of matches and a second count of the sample: the sample is chosen by a
    hash of the id, which no index serves, so every pass reads all the workspace's contacts. The
    filter sits in a CASE (as in `per_row`), so its event subqueries run per sampled contact that
    gets that far, through the index on (contact, event name, time), instead of hashing every
    recent event of the workspace: 0.5 s instead of 2.2 s in the benchmark (docs/benchmarks.md)."""
    step = max(1, total // SAMPLE_TARGET)
    matched = Case(When(condition, then=Value(True)), default=Value(False), output_field=BooleanField())
    pairs = list(contacts.annotate(bucket=_bucket(step)).filter(bucket=0).annotate(matched=matched)
                 .values_list("id", "matched"))
    hit_ids = sorted((pk for pk, hit in pairs if hit), reverse=True)
    rows = list(contacts.filter(pk__in=hit_ids[:limit]).order_by("-id").values(*_FIELDS)) if limit else []
    return len(pairs), len(hit_ids), rows


def _sample_shape(rows: list[dict], limit: int) -> list[dict]:
    return [{"id": r["id"], "email": r["email"],
             "name": " ".join(p for p in (r["first_name"], r["last_name"]) if p),
             "company": r["company__name"] or ""} for r in rows[:limit]]


def _wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def segment_preview(*, workspace: Workspace, definition: object, limit: int = 20,
                    segment_slug: str | None = None, budget_seconds: float | None = None) -> dict:
    """{"count", "estimated", "sample": [{id, email, name, company}], "sql_ms"} and, for an
    estimate, "count_low"/"count_high" (95%) and "sampled"; FilterError for a bad filter."""
    flt = filter_parse(definition, workspace_id=workspace.id, segment_slug=segment_slug)
    limit = max(0, min(int(limit), 200))
    budget = EXACT_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    started = time.perf_counter()
    contacts = Contact.objects.filter(workspace_id=workspace.id)
    condition = filter_q(flt, workspace_id=workspace.id, now=clock.now())
    matching = contacts.filter(per_row(condition))
    try:
        with _time_limit(budget):
            rows = _rows(matching, limit)
        result = {"count": rows[0]["total"] if rows else 0, "estimated": False}
    except _OverBudget:
        total = contacts.count()
        n, hits, rows = _estimate(contacts, condition, total=total, limit=limit)
        low, high = _wilson(hits, n)
        result = {"count": round(hits / n * total) if n else 0, "estimated": True, "sampled": n,
                  "count_low": math.floor(low * total), "count_high": math.ceil(high * total)}
    result["sample"] = _sample_shape(rows, limit)
    result["sql_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result
