"""Segments: preview, create, edit (versions), archive, members (pages and CSV), history, static
list members by hand or CSV, and the segments a contact is in."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from django.http import StreamingHttpResponse
from ninja import File, Form, Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.files import UploadedFile

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.contacts import selectors as contact_selectors
from leadflow.contacts.imports import ImportFileError
from leadflow.core import clock
from leadflow.segments import selectors, services
from leadflow.segments.language import FilterError
from leadflow.segments.models import Segment

router = Router(tags=["segments"])


# --- schemas ----------------------------------------------------------------------------------

class ProblemOut(Schema):
    detail: str
    path: str | None = None


class PreviewIn(Schema):
    definition: Any
    limit: int = 20


class PreviewContactOut(Schema):
    id: int
    email: str | None = None
    user_id: str | None = None
    first_name: str = ""
    last_name: str = ""


class PreviewOut(Schema):
    count: int
    estimated: bool = False
    count_low: int | None = None
    count_high: int | None = None
    sampled: int | None = None
    sample: list[Any]
    sql_ms: float | None = None


class SegmentIn(Schema):
    name: str
    kind: Literal["dynamic", "static"] = "dynamic"
    definition: Any = None


class SegmentPatch(Schema):
    name: str | None = None
    definition: Any = None


class SegmentOut(Schema):
    id: int
    name: str
    slug: str
    kind: str
    definition: Any
    version: int
    members: int
    created_at: dt.datetime
    updated_at: dt.datetime
    archived_at: dt.datetime | None


class SegmentPage(Schema):
    items: list[SegmentOut]
    next: str | None


class VersionOut(Schema):
    version: int
    definition: Any
    actor: str
    created_at: dt.datetime


class MemberOut(Schema):
    contact_id: int
    email: str | None
    user_id: str | None
    first_name: str
    last_name: str
    lifecycle_stage: str
    since: dt.datetime


class MemberPage(Schema):
    items: list[MemberOut]
    next: str | None


class HistoryDayOut(Schema):
    date: dt.date
    entered: int
    exited: int
    size: int


class MembersIn(Schema):
    contact_ids: list[int] = []
    emails: list[str] = []
    user_ids: list[str] = []


class MembersReportOut(Schema):
    changed: int
    unchanged: int
    rows: int
    contact_ids: list[int]
    unknown: list[dict]


class ContactSegmentOut(Schema):
    id: int
    name: str
    slug: str
    kind: str
    version: int
    archived: bool
    since: dt.datetime


# --- helpers ----------------------------------------------------------------------------------

def _problem(exc: FilterError) -> Status:
    return Status(400, {"detail": str(exc), "path": getattr(exc, "path", None) or None})


def _get(request, segment_id: int) -> Segment:
    segment = selectors.segment_get(workspace=request.workspace, segment_id=segment_id)
    if segment is None:
        raise HttpError(404, f"no segment {segment_id} in this workspace")
    return segment


def segments_out(segments: list[Segment]) -> list[dict]:
    counts = selectors.segment_member_counts(segments=segments)
    return [{"id": s.pk, "name": s.name, "slug": s.slug, "kind": s.kind, "definition": s.definition,
             "version": s.version, "members": counts[s.pk], "created_at": s.created_at,
             "updated_at": s.updated_at, "archived_at": s.archived_at} for s in segments]


def _member_out(m) -> dict:
    c = m.contact
    return {"contact_id": c.pk, "email": c.email or None, "user_id": c.user_id or None,
            "first_name": c.first_name, "last_name": c.last_name, "lifecycle_stage": c.lifecycle_stage,
            "since": m.since}


# --- routes -----------------------------------------------------------------------------------

@router.post("/preview", response={200: PreviewOut, 400: ProblemOut},
             summary="Count and a sample of the contacts an unsaved filter matches")
def segments_preview(request, payload: PreviewIn):
    from leadflow.segments.preview import segment_preview

    if not 0 <= payload.limit <= 100:
        raise HttpError(400, "limit must be between 0 and 100")
    try:
        return segment_preview(workspace=request.workspace, definition=payload.definition, limit=payload.limit)
    except FilterError as exc:
        return _problem(exc)


@router.get("/contacts/{contact_id}", response=list[ContactSegmentOut],
            summary="The segments a contact is in now, with when it entered")
def contact_segments(request, contact_id: int):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return [{"id": row["segment"].pk, "name": row["segment"].name, "slug": row["segment"].slug,
             "kind": row["segment"].kind, "version": row["segment"].version,
             "archived": row["segment"].archived_at is not None, "since": row["since"]}
            for row in selectors.contact_segments(workspace=request.workspace, contact=contact)]


@router.get("", response=SegmentPage, summary="List segments (newest first) with their member counts")
def segments_list(request, archived: bool = Query(False, description="list archived segments instead"),
                  kind: Literal["", "dynamic", "static"] = "",
                  limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                  next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = selectors.segment_list(workspace=request.workspace, archived=archived, kind=kind)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": segments_out(items), "next": following}


@router.post("", response={201: SegmentOut, 400: ProblemOut},
             summary="Create a dynamic segment (with its filter) or a static list")
def segments_create(request, payload: SegmentIn):
    """A dynamic segment is evaluated at once: its first members enter (with `Segment Entered`
    events) before the answer."""
    try:
        segment = services.segment_create(workspace=request.workspace, name=payload.name, kind=payload.kind,
                                          definition=payload.definition, actor=actor(request))
    except FilterError as exc:
        return _problem(exc)
    return Status(201, segments_out([segment])[0])


@router.get("/{segment_id}", response=SegmentOut, summary="One segment with its version and member count")
def segments_get(request, segment_id: int):
    return segments_out([_get(request, segment_id)])[0]


@router.patch("/{segment_id}", response={200: SegmentOut, 400: ProblemOut},
              summary="Rename or redefine; a new definition is a new version and members are re-evaluated")
def segments_update(request, segment_id: int, payload: SegmentPatch):
    segment = _get(request, segment_id)
    try:
        segment = services.segment_update(segment=segment, actor=actor(request), name=payload.name,
                                          definition=payload.definition)
    except FilterError as exc:
        return _problem(exc)
    return segments_out([segment])[0]


@router.delete("/{segment_id}", response={204: None},
               summary="Archive: membership stops being kept current; members and history stay")
def segments_archive(request, segment_id: int):
    services.segment_archive(segment=_get(request, segment_id), actor=actor(request))
    return Status(204, None)


@router.get("/{segment_id}/versions", response=list[VersionOut], summary="Every definition, newest first")
def segments_versions(request, segment_id: int):
    return list(selectors.segment_versions(segment=_get(request, segment_id)))


@router.get("/{segment_id}/members", response=MemberPage,
            summary="Current members, newest first; `?format=csv` streams them all as CSV")
def segments_members(request, segment_id: int, format: Literal["json", "csv"] = "json",
                     limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                     next: str | None = Query(None, description="the `next` cursor of the previous page")):
    segment = _get(request, segment_id)
    if format == "csv":
        response = StreamingHttpResponse(selectors.segment_members_csv(segment=segment),
                                         content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="segment-{segment.slug}.csv"'
        return response
    items, following = cursor.page(selectors.segment_members(segment=segment), cursor=next, limit=limit,
                                   order=("-pk",))
    return {"items": [_member_out(m) for m in items], "next": following}


@router.get("/{segment_id}/history", response=list[HistoryDayOut],
            summary="Membership over time: entries, exits and size per UTC day")
def segments_history(request, segment_id: int, start: dt.date | None = None, end: dt.date | None = None,
                     days: int = Query(30, ge=1, le=selectors.MAX_HISTORY_DAYS)):
    segment = _get(request, segment_id)
    end = end or clock.now().date()
    start = start or end - dt.timedelta(days=days - 1)
    return selectors.segment_history(segment=segment, start=start, end=end)


@router.post("/{segment_id}/members", response=MembersReportOut,
             summary="Add contacts to a static list by id, email or user id")
def segments_members_add(request, segment_id: int, payload: MembersIn):
    report = services.segment_members_add(segment=_get(request, segment_id), actor=actor(request),
                                          contact_ids=payload.contact_ids, emails=payload.emails,
                                          user_ids=payload.user_ids)
    return report.as_dict()


@router.delete("/{segment_id}/members", response=MembersReportOut,
               summary="Remove contacts from a static list by id, email or user id")
def segments_members_remove(request, segment_id: int, payload: MembersIn):
    report = services.segment_members_remove(segment=_get(request, segment_id), actor=actor(request),
                                             contact_ids=payload.contact_ids, emails=payload.emails,
                                             user_ids=payload.user_ids)
    return report.as_dict()


@router.post("/{segment_id}/members/csv", response={200: MembersReportOut, 400: ProblemOut},
             summary="Add (or with remove=true, remove) the people a CSV file names by email or user_id")
def segments_members_csv(request, segment_id: int, file: File[UploadedFile], remove: Form[bool] = False):
    segment = _get(request, segment_id)
    try:
        report = services.segment_members_import(segment=segment, file=file, actor=actor(request), remove=remove)
    except ImportFileError as exc:
        return Status(400, {"detail": str(exc)})
    return report.as_dict()
