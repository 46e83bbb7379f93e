"""Reads over segments, always scoped to one workspace: segments, members, history, versions."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator

from django.db.models import Count, QuerySet
from django.db.models.functions import TruncDate

from leadflow.contacts.models import Contact
from leadflow.core.models import Workspace
from leadflow.segments.models import Segment, SegmentChange, SegmentMember, SegmentVersion

EXPORT_COLUMNS = ("contact_id", "email", "user_id", "first_name", "last_name", "company", "lifecycle_stage",
                  "fit_grade", "engagement_score", "member_since")
EXPORT_CHUNK = 2000
MAX_HISTORY_DAYS = 3660


def segment_get(*, workspace: Workspace, segment_id: int) -> Segment | None:
    return Segment.objects.filter(workspace=workspace, pk=segment_id).first()


def segment_list(*, workspace: Workspace, archived: bool = False, kind: str = "") -> QuerySet[Segment]:
    qs = Segment.objects.filter(workspace=workspace, archived_at__isnull=not archived)
    return qs.filter(kind=kind) if kind else qs


def segment_member_counts(*, segments: list[Segment]) -> dict[int, int]:
    """{segment id: current member count} in one query."""
    counts = dict(SegmentMember.objects.filter(segment__in=[s.pk for s in segments]).order_by()
                  .values("segment_id").annotate(n=Count("pk")).values_list("segment_id", "n"))
    return {s.pk: counts.get(s.pk, 0) for s in segments}


def segment_members(*, segment: Segment) -> QuerySet[SegmentMember]:
    """Current members with their contact (and company) loaded; page with api.cursor."""
    return (SegmentMember.objects.filter(workspace_id=segment.workspace_id, segment=segment)
            .select_related("contact__company"))


def segment_members_csv(*, segment: Segment) -> Iterator[str]:
    """The members as CSV text, header first, streamed in chunks of rows by contact id (keyset
    pages, so memory stays flat however large the segment)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate(0)
        return text

    writer.writerow(EXPORT_COLUMNS)
    yield flush()
    after = 0
    while True:
        chunk = list(segment_members(segment=segment).filter(contact_id__gt=after).order_by("contact_id")
                     [:EXPORT_CHUNK])
        if not chunk:
            return
        for m in chunk:
            c = m.contact
            writer.writerow([c.pk, c.email, c.user_id, _cell(c.first_name), _cell(c.last_name),
                             _cell(c.company.name if c.company else ""), c.lifecycle_stage, c.fit_grade,
                             f"{c.engagement_score:g}", m.since.isoformat()])
        after = chunk[-1].contact_id
        yield flush()


def _cell(value: str) -> str:
    """Keep spreadsheet programs from running a cell as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def segment_history(*, segment: Segment, start: dt.date, end: dt.date) -> list[dict]:
    """Membership over time: per UTC day from `start` to `end` (inclusive), the entries, exits
    and the size at the end of the day, from the SegmentChange rows."""
    if end < start:
        start, end = end, start
    if (end - start).days > MAX_HISTORY_DAYS:
        start = end - dt.timedelta(days=MAX_HISTORY_DAYS)
    start_at = dt.datetime.combine(start, dt.time(), tzinfo=dt.timezone.utc)
    changes = SegmentChange.objects.filter(workspace_id=segment.workspace_id, segment=segment)
    before = dict(changes.filter(at__lt=start_at).order_by().values("kind").annotate(n=Count("pk"))
                  .values_list("kind", "n"))
    size = before.get("entered", 0) - before.get("exited", 0)
    per_day: dict[tuple[dt.date, str], int] = {}
    rows = (changes.filter(at__gte=start_at, at__lt=start_at + dt.timedelta(days=(end - start).days + 1))
            .annotate(day=TruncDate("at", tzinfo=dt.timezone.utc)).order_by()
            .values("day", "kind").annotate(n=Count("pk")).values_list("day", "kind", "n"))
    for day, kind, n in rows:
        per_day[(day, kind)] = n
    out = []
    day = start
    while day <= end:
        entered, exited = per_day.get((day, "entered"), 0), per_day.get((day, "exited"), 0)
        size += entered - exited
        out.append({"date": day, "entered": entered, "exited": exited, "size": size})
        day += dt.timedelta(days=1)
    return out


def segment_changes(*, segment: Segment) -> QuerySet[SegmentChange]:
    """Entries and exits one by one (newest first with api.cursor's ("-at", "-id") order)."""
    return SegmentChange.objects.filter(workspace_id=segment.workspace_id, segment=segment).select_related("contact")


def segment_versions(*, segment: Segment) -> QuerySet[SegmentVersion]:
    return SegmentVersion.objects.filter(segment=segment).order_by("-version")


def contact_segments(*, workspace: Workspace, contact: Contact) -> list[dict]:
    """The segments a contact is in now, with when they entered, active segments first by name."""
    rows = (SegmentMember.objects.filter(workspace=workspace, contact=contact)
            .select_related("segment").order_by("segment__archived_at", "segment__name", "segment_id"))
    return [{"segment": m.segment, "since": m.since} for m in rows]
