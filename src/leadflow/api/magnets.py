"""Lead magnets: list, create, get, update, archive; each with its downloads and form submissions."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from ninja import Query, Router, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.schemas import MagnetIn, MagnetOut, MagnetPage, MagnetPatch
from leadflow.api.auth import actor
from leadflow.core.services import ServiceError
from leadflow.tracking import forms as form_service
from leadflow.tracking.models import LeadMagnet
from leadflow.tracking.selectors import magnet_counts

router = Router(tags=["lead magnets"])



def magnets_out(workspace, magnets: list[LeadMagnet]) -> list[dict]:
    counts = magnet_counts(workspace=workspace, magnets=magnets)
    return [{
        "id": m.pk, "slug": m.slug, "name": m.name, "kind": m.kind, "delivery_url": m.delivery_url,
        "description": m.description, "created_at": m.created_at, "archived_at": m.archived_at,
        "email_delivery": m.email_delivery,
        "delivery_template": m.delivery_template.slug if m.delivery_template_id else None,
        **counts[m.pk],
    } for m in magnets]


def _get(request, magnet_id: int) -> LeadMagnet:
    magnet = (LeadMagnet.objects.filter(workspace=request.workspace, pk=magnet_id)
              .select_related("delivery_template").first())
    if magnet is None:
        raise HttpError(404, f"no lead magnet {magnet_id} in this workspace")
    return magnet


def _save(request, *, values: dict, magnet: LeadMagnet | None = None) -> LeadMagnet:
    try:
        with transaction.atomic():
            return form_service.magnet_save(workspace=request.workspace, magnet=magnet, **values)
    except IntegrityError:  # a concurrent request took the slug between the check and the insert
        raise ServiceError(f"a lead magnet with the slug {values.get('slug')!r} already exists") from None


@router.get("", response=MagnetPage, summary="List lead magnets (newest first) with their counts")
def magnets_list(request, archived: bool = Query(False, description="list archived magnets instead"),
                 limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                 next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = (LeadMagnet.objects.filter(workspace=request.workspace, archived_at__isnull=not archived)
          .select_related("delivery_template"))
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": magnets_out(request.workspace, items), "next": following}


@router.post("", response={201: MagnetOut}, summary="Create a lead magnet")
def magnets_create(request, payload: MagnetIn):
    magnet = _save(request, values=payload.dict())
    return Status(201, magnets_out(request.workspace, [magnet])[0])


@router.get("/{magnet_id}", response=MagnetOut, summary="One lead magnet with its counts")
def magnets_get(request, magnet_id: int):
    return magnets_out(request.workspace, [_get(request, magnet_id)])[0]


@router.patch("/{magnet_id}", response=MagnetOut, summary="Change a lead magnet (only the fields sent)")
def magnets_update(request, magnet_id: int, payload: MagnetPatch):
    magnet = _get(request, magnet_id)
    values = {"slug": magnet.slug, "name": magnet.name, "kind": magnet.kind,
              "delivery_url": magnet.delivery_url, "description": magnet.description,
              "email_delivery": magnet.email_delivery, "delivery_template": magnet.delivery_template_id}
    values.update({k: v for k, v in payload.dict(exclude_unset=True).items() if v is not None})
    magnet = _save(request, values=values, magnet=magnet)
    return magnets_out(request.workspace, [magnet])[0]


@router.delete("/{magnet_id}", response={204: None},
               summary="Archive a lead magnet: it leaves the lists, its history and links stay")
def magnets_archive(request, magnet_id: int):
    form_service.magnet_archive(magnet=_get(request, magnet_id), actor=actor(request))
    return Status(204, None)
