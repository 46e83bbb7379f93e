"""Stay-in-touch streams: create, list, get (items with how many people had each, how many are
exhausted, which journeys use it), rename, delete, apply and export as code, and add, remove and
reorder items."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ninja import Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.journeys import streams as services
from leadflow.journeys.models import Stream
from leadflow.messaging.models import Template

router = Router(tags=["journey streams"])


# --- schemas ----------------------------------------------------------------------------------

class StreamIn(Schema):
    name: str
    slug: str | None = Field(None, description="what journeys name it; default: made from the name")


class StreamPatch(Schema):
    name: str | None = None


class StreamSummaryOut(Schema):
    id: int
    slug: str
    name: str
    items: int
    created_at: dt.datetime


class StreamPage(Schema):
    items: list[StreamSummaryOut]
    next: str | None


class ItemOut(Schema):
    id: int
    position: int
    template_id: int
    template: str
    template_name: str
    role: str = Field(description="empty: every role")
    had: int = Field(description="people who were sent this piece")


class StreamOut(Schema):
    id: int
    slug: str
    name: str
    created_at: dt.datetime
    exhausted: int = Field(description="people in a journey who have had every piece for them")
    journeys: list[str]
    items: list[ItemOut]


class ItemIn(Schema):
    template_id: int | None = None
    template: str | None = Field(None, description="the template's slug (instead of template_id)")
    role: str = Field("", description="the value of the contact's role trait it is for; empty: every role")
    position: int | None = Field(None, description="1 = first; the rest move down. Default: last")


class OrderIn(Schema):
    item_ids: list[int]


class ApplyIn(Schema):
    slug: str
    name: str | None = None
    items: list[dict[str, Any]] = []


class ApplyOut(Schema):
    changed: bool
    stream: StreamOut


# --- helpers ----------------------------------------------------------------------------------

def _get(request, stream_id: int) -> Stream:
    stream = services.stream_get(workspace=request.workspace, stream_id=stream_id)
    if stream is None:
        raise HttpError(404, f"no stream {stream_id} in this workspace")
    return stream


def stream_out(stream: Stream) -> dict:
    report = services.stream_report(stream=stream)
    return {"id": stream.pk, "slug": stream.slug, "name": stream.name, "created_at": stream.created_at,
            "exhausted": report["exhausted"], "journeys": report["journeys"],
            "items": [{"id": row["item"].pk, "position": row["item"].position, "template_id": row["item"].template_id,
                       "template": row["item"].template.slug, "template_name": row["item"].template.name,
                       "role": row["item"].role, "had": row["had"]} for row in report["items"]]}


def _template(request, payload: ItemIn) -> Template:
    if (payload.template_id is None) == (payload.template is None):
        raise HttpError(400, "give either template_id or template (a slug)")
    query = Template.objects.filter(workspace=request.workspace)
    template = (query.filter(pk=payload.template_id) if payload.template_id is not None
                else query.filter(slug=payload.template)).first()
    if template is None:
        raise HttpError(400, f"template: there is no email template "
                             f"{payload.template_id if payload.template_id is not None else repr(payload.template)}")
    return template


# --- routes -----------------------------------------------------------------------------------

@router.get("", response=StreamPage, summary="List streams (newest first) with their number of items")
def streams_list(request, limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                 next: str | None = Query(None, description="the `next` cursor of the previous page")):
    items, following = cursor.page(services.stream_list(workspace=request.workspace), cursor=next, limit=limit,
                                   order=("-pk",))
    return {"items": [{"id": s.pk, "slug": s.slug, "name": s.name, "items": s.item_count,
                       "created_at": s.created_at} for s in items], "next": following}


@router.post("", response={201: StreamOut}, summary="Create an empty stream")
def streams_create(request, payload: StreamIn):
    stream = services.stream_create(workspace=request.workspace, name=payload.name, slug=payload.slug,
                                    actor=actor(request))
    return Status(201, stream_out(stream))


@router.put("/apply", response={200: ApplyOut}, summary="Create or update a stream from its file form "
            "({slug, name, items: [{template, role}]}); the same file twice changes nothing")
def streams_apply(request, payload: ApplyIn):
    stream, changed = services.stream_apply(workspace=request.workspace, data=payload.model_dump(exclude_none=True),
                                            actor=actor(request))
    return {"changed": changed, "stream": stream_out(stream)}


@router.get("/{stream_id}", response=StreamOut,
            summary="One stream: items in order with how many had each, how many are exhausted")
def streams_get(request, stream_id: int):
    return stream_out(_get(request, stream_id))


@router.get("/{stream_id}/export", response=dict, summary="The stream in the form /apply takes")
def streams_export(request, stream_id: int):
    return services.stream_export(stream=_get(request, stream_id))


@router.patch("/{stream_id}", response=StreamOut, summary="Rename (the slug stays: journeys name it)")
def streams_update(request, stream_id: int, payload: StreamPatch):
    stream = services.stream_update(stream=_get(request, stream_id), name=payload.name, actor=actor(request))
    return stream_out(stream)


@router.delete("/{stream_id}", response={204: None},
               summary="Delete a stream no journey uses; what people had stays in the outbox")
def streams_delete(request, stream_id: int):
    services.stream_delete(stream=_get(request, stream_id), actor=actor(request))
    return Status(204, None)


@router.post("/{stream_id}/items", response={201: StreamOut},
             summary="Add a template, for every role or one; people who had everything get it next")
def streams_item_add(request, stream_id: int, payload: ItemIn):
    stream = _get(request, stream_id)
    services.stream_item_add(stream=stream, template=_template(request, payload), role=payload.role,
                             position=payload.position, actor=actor(request))
    return Status(201, stream_out(stream))


@router.put("/{stream_id}/items/order", response=StreamOut, summary="Reorder: every item id, each once")
def streams_items_reorder(request, stream_id: int, payload: OrderIn):
    stream = _get(request, stream_id)
    services.stream_items_reorder(stream=stream, item_ids=payload.item_ids, actor=actor(request))
    return stream_out(stream)


@router.delete("/{stream_id}/items/{item_id}", response=StreamOut, summary="Take an item out of the stream")
def streams_item_remove(request, stream_id: int, item_id: int):
    stream = _get(request, stream_id)
    item = services.stream_item_get(stream=stream, item_id=item_id)
    if item is None:
        raise HttpError(404, f"no item {item_id} in stream {stream.slug!r}")
    services.stream_item_remove(item=item, actor=actor(request))
    return stream_out(stream)
