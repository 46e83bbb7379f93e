"""Hosted forms: list, create, get, update, archive; each with its hosted URL and embed snippet."""

from __future__ import annotations

from django.conf import settings
from django.db import IntegrityError, transaction
from ninja import Query, Router, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.schemas import FormIn, FormOut, FormPage, FormPatch
from leadflow.api.auth import actor
from leadflow.core.services import ServiceError
from leadflow.tracking import forms as form_service
from leadflow.tracking.models import Form
from leadflow.tracking.public_views import embed_snippet, hosted_url

router = Router(tags=["forms"])

EDITABLE = ("submit_label", "consent_text", "consent_required", "consent_topic", "success_message",
            "redirect_url")


def public_base_url(request) -> str:
    return settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")


def form_out(form: Form, *, base_url: str) -> dict:
    magnet = form.lead_magnet
    where = {"base_url": base_url, "workspace_slug": form.workspace.slug, "form_slug": form.slug}
    return {
        "id": form.pk, "slug": form.slug, "name": form.name, "fields": form.fields,
        "submit_label": form.submit_label, "consent_text": form.consent_text,
        "consent_required": form.consent_required, "consent_topic": form.consent_topic,
        "lead_magnet": {"id": magnet.pk, "slug": magnet.slug, "name": magnet.name} if magnet else None,
        "success_message": form.success_message, "redirect_url": form.redirect_url,
        "created_at": form.created_at, "updated_at": form.updated_at, "archived_at": form.archived_at,
        "hosted_url": hosted_url(**where), "embed_snippet": embed_snippet(**where),
    }


def _get(request, form_id: int) -> Form:
    form = (Form.objects.select_related("workspace", "lead_magnet")
            .filter(workspace=request.workspace, pk=form_id).first())
    if form is None:
        raise HttpError(404, f"no form {form_id} in this workspace")
    return form


def _save(request, *, values: dict, form: Form | None = None) -> Form:
    try:
        with transaction.atomic():
            saved = form_service.form_save(workspace=request.workspace, form=form, **values)
    except IntegrityError:  # a concurrent request took the slug between the check and the insert
        raise ServiceError(f"a form with the slug {values.get('slug')!r} already exists") from None
    return _get(request, saved.pk)


@router.get("", response=FormPage, summary="List forms (newest first)")
def forms_list(request, archived: bool = Query(False, description="list archived forms instead"),
               limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
               next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = (Form.objects.select_related("workspace", "lead_magnet")
          .filter(workspace=request.workspace, archived_at__isnull=not archived))
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    base = public_base_url(request)
    return {"items": [form_out(f, base_url=base) for f in items], "next": following}


@router.post("", response={201: FormOut}, summary="Create a hosted form")
def forms_create(request, payload: FormIn):
    form = _save(request, values=payload.dict())
    return Status(201, form_out(form, base_url=public_base_url(request)))


@router.get("/{form_id}", response=FormOut, summary="One form")
def forms_get(request, form_id: int):
    return form_out(_get(request, form_id), base_url=public_base_url(request))


@router.patch("/{form_id}", response=FormOut, summary="Change a form (only the fields sent)")
def forms_update(request, form_id: int, payload: FormPatch):
    form = _get(request, form_id)
    changes = payload.dict(exclude_unset=True)
    values = {"slug": form.slug, "name": form.name, "fields": form.fields,
              "lead_magnet": form.lead_magnet_id,
              **{name: getattr(form, name) for name in EDITABLE}}
    values.update({k: v for k, v in changes.items() if v is not None or k == "lead_magnet"})
    form = _save(request, values=values, form=form)
    return form_out(form, base_url=public_base_url(request))


@router.delete("/{form_id}", response={204: None},
               summary="Archive a form: its hosted page stops answering, its history stays")
def forms_archive(request, form_id: int):
    form_service.form_archive(form=_get(request, form_id), actor=actor(request))
    return Status(204, None)
