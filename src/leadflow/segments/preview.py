"""Preview an unsaved filter: how many contacts match now, and a few of them."""

from __future__ import annotations

import time

from django.db.models import Count, Window

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.segments.compiler import filter_q
from leadflow.segments.language import filter_parse


def segment_preview(*, workspace: Workspace, definition: object, limit: int = 20,
                    segment_slug: str | None = None) -> dict:
    """{"count", "sample": [{id, email, name, company}], "sql_ms"}; FilterError for a bad filter."""
    flt = filter_parse(definition, workspace_id=workspace.id, segment_slug=segment_slug)
    limit = max(0, min(int(limit), 200))
    started = time.perf_counter()
    matching = Contact.objects.filter(workspace_id=workspace.id).filter(
        filter_q(flt, workspace_id=workspace.id, now=clock.now()))
    # One query: the total comes with the sample as a window count, so the filter is evaluated
    # once rather than once for the count and again for the sample.
    rows = list(matching.annotate(total=Window(Count("pk"))).order_by("-id")
                .values("id", "email", "first_name", "last_name", "company__name", "total")[:max(limit, 1)])
    count = rows[0]["total"] if rows else 0
    sample = [{"id": r["id"], "email": r["email"],
               "name": " ".join(p for p in (r["first_name"], r["last_name"]) if p),
               "company": r["company__name"] or ""} for r in rows[:limit]]
    sql_ms = (time.perf_counter() - started) * 1000
    return {"count": count, "sample": sample, "sql_ms": round(sql_ms, 2)}
