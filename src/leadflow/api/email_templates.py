"""Management API: email layouts, templates (and copies of them), versions, approval, diff,
preview and test sends.

A secret key acts as the workspace: it may approve or reject like an admin, except a high-risk
template, which a member with the compliance role approves in the web UI.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from ninja import Body, Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.contacts import selectors as contact_selectors
from leadflow.messaging import content as services
from leadflow.messaging.models import Layout, Template, TemplateVersion

router = Router(tags=["email templates"])


# --- schemas ----------------------------------------------------------------------------------

class ProblemOut(Schema):
    detail: str


class LayoutIn(Schema):
    name: str
    slug: str | None = None
    html: str
    text: str = ""


class LayoutPatch(Schema):
    name: str | None = None
    html: str | None = None
    text: str | None = None


class LayoutOut(Schema):
    id: int
    name: str
    slug: str
    html: str
    text: str
    created_at: dt.datetime
    updated_at: dt.datetime


class TemplateIn(Schema):
    name: str
    slug: str | None = None
    kind: Literal["marketing", "transactional"] = "marketing"
    topic: str = ""
    high_risk: bool = False
    subject: str
    preheader: str = ""
    html: str
    text: str = ""
    blocks: dict[str, Any] | None = None
    layout_id: int | None = None


class TemplatePatch(Schema):
    name: str | None = None
    kind: Literal["marketing", "transactional"] | None = None
    topic: str | None = None
    high_risk: bool | None = None


class DuplicateIn(Schema):
    name: str | None = Field(None, description="the copy's name; default: \"<name> (copy)\"")
    slug: str | None = None
    version: int | None = Field(None, description="the version to copy; default: the newest")
    subject: str | None = Field(None, description="a new subject for the copy; default: the copied one")
    preheader: str | None = Field(None, description="a new preheader for the copy; default: the copied one")


class TemplateOut(Schema):
    id: int
    name: str
    slug: str
    kind: str
    topic: str
    high_risk: bool
    approved_version: int | None
    latest_version: int | None
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    archived_at: dt.datetime | None


class TemplatePage(Schema):
    items: list[TemplateOut]
    next: str | None


class VersionOut(Schema):
    number: int
    status: str
    subject: str
    preheader: str
    html: str
    text: str
    blocks: dict[str, Any]
    layout_id: int | None
    layout_html: str
    layout_text: str
    note: str
    created_by: str
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    decided_by: str
    decided_at: dt.datetime | None
    decision_reason: str


class VersionEditIn(Schema):
    subject: str | None = None
    preheader: str | None = None
    html: str | None = None
    text: str | None = None
    blocks: dict[str, Any] | None = None
    layout_id: int | None = None
    remove_layout: bool = False
    note: str | None = None
    base_version: int | None = None


class RejectIn(Schema):
    reason: str


class DiffOut(Schema):
    field: str
    changed: bool
    diff: str


class PreviewIn(Schema):
    contact_id: int | None = None
    stage: str = ""
    role: str = ""
    segments: list[str] = []
    context: dict[str, Any] | None = None


class PreviewOut(Schema):
    subject: str
    preheader: str
    html: str
    text: str
    warnings: list[str]


class TestSendIn(Schema):
    to_email: str
    contact_id: int | None = None


class TestSendOut(Schema):
    message_id: int
    to_email: str
    status: str


# --- helpers ----------------------------------------------------------------------------------

def _layout(request, layout_id: int) -> Layout:
    layout = services.layout_get(workspace=request.workspace, layout_id=layout_id)
    if layout is None:
        raise HttpError(404, f"no layout {layout_id} in this workspace")
    return layout


def _template(request, template_id: int) -> Template:
    template = services.template_get(workspace=request.workspace, template_id=template_id)
    if template is None:
        raise HttpError(404, f"no template {template_id} in this workspace")
    return template


def _version(request, template_id: int, number: int) -> TemplateVersion:
    template = _template(request, template_id)
    version = services.version_get(template=template, number=number)
    if version is None:
        raise HttpError(404, f"template {template_id} has no version {number}")
    return version


def _contact(request, contact_id: int | None):
    if contact_id is None:
        return None
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return contact


def _layout_out(layout: Layout) -> dict:
    return {"id": layout.pk, "name": layout.name, "slug": layout.slug, "html": layout.html, "text": layout.text,
            "created_at": layout.created_at, "updated_at": layout.updated_at}


def _template_out(template: Template) -> dict:
    latest = getattr(template, "latest_number", None)
    if latest is None:
        latest = template.versions.order_by("-number").values_list("number", flat=True).first()
    return {"id": template.pk, "name": template.name, "slug": template.slug, "kind": template.kind,
            "topic": template.topic, "high_risk": template.high_risk,
            "approved_version": template.approved_version.number if template.approved_version_id else None,
            "latest_version": latest, "created_by": template.created_by, "created_at": template.created_at,
            "updated_at": template.updated_at, "archived_at": template.archived_at}


def _version_out(version: TemplateVersion) -> dict:
    return {"number": version.number, "status": version.status, "subject": version.subject,
            "preheader": version.preheader, "html": version.html, "text": version.text,
            "blocks": version.blocks or {}, "layout_id": version.layout_id, "layout_html": version.layout_html,
            "layout_text": version.layout_text, "note": version.note, "created_by": version.created_by,
            "created_at": version.created_at, "submitted_at": version.submitted_at,
            "decided_by": version.decided_by, "decided_at": version.decided_at,
            "decision_reason": version.decision_reason}


# --- layouts ----------------------------------------------------------------------------------

@router.get("/layouts", response=list[LayoutOut], summary="Layouts, by name")
def layouts_list(request):
    return [_layout_out(layout) for layout in services.layout_list(workspace=request.workspace)]


@router.post("/layouts", response={201: LayoutOut, 400: ProblemOut},
             summary="Create a layout: header and footer around {{ content }}")
def layouts_create(request, payload: LayoutIn):
    layout = services.layout_create(workspace=request.workspace, name=payload.name, slug=payload.slug,
                                    html=payload.html, text=payload.text, actor=actor(request))
    return Status(201, _layout_out(layout))


@router.get("/layouts/{layout_id}", response=LayoutOut, summary="One layout")
def layouts_get(request, layout_id: int):
    return _layout_out(_layout(request, layout_id))


@router.patch("/layouts/{layout_id}", response={200: LayoutOut, 400: ProblemOut},
              summary="Change a layout (drafts see it at once; submitted versions keep their copy)")
def layouts_update(request, layout_id: int, payload: LayoutPatch):
    layout = services.layout_update(layout=_layout(request, layout_id), actor=actor(request), name=payload.name,
                                    html=payload.html, text=payload.text)
    return _layout_out(layout)


@router.delete("/layouts/{layout_id}", response={204: None, 400: ProblemOut},
               summary="Delete a layout no draft uses")
def layouts_delete(request, layout_id: int):
    services.layout_delete(layout=_layout(request, layout_id), actor=actor(request))
    return Status(204, None)


# --- templates --------------------------------------------------------------------------------

@router.get("", response=TemplatePage, summary="Templates, newest first")
def templates_list(request, archived: bool = Query(False, description="list archived templates instead"),
                   q: str = "", limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                   next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = services.template_list(workspace=request.workspace, archived=archived, q=q)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": [_template_out(t) for t in items], "next": following}


@router.post("", response={201: TemplateOut, 400: ProblemOut},
             summary="Create a template with its content as version 1 (a draft)")
def templates_create(request, payload: TemplateIn):
    template = services.template_create(
        workspace=request.workspace, name=payload.name, slug=payload.slug, kind=payload.kind, topic=payload.topic,
        high_risk=payload.high_risk, actor=actor(request), subject=payload.subject, preheader=payload.preheader,
        html=payload.html, text=payload.text, blocks=payload.blocks, layout=payload.layout_id)
    return Status(201, _template_out(template))


@router.get("/{template_id}", response=TemplateOut, summary="One template")
def templates_get(request, template_id: int):
    return _template_out(_template(request, template_id))


@router.patch("/{template_id}", response={200: TemplateOut, 400: ProblemOut},
              summary="Change name, kind, topic or the high-risk flag (clearing it is for compliance users, in the UI)")
def templates_update(request, template_id: int, payload: TemplatePatch):
    template = services.template_update(template=_template(request, template_id), actor=actor(request), role=None,
                                        name=payload.name, kind=payload.kind, topic=payload.topic,
                                        high_risk=payload.high_risk)
    return _template_out(template)


@router.post("/{template_id}/duplicate", response={201: TemplateOut, 400: ProblemOut},
             summary="Copy a template: a version's content becomes version 1 (a draft) of a new template; "
                     "approval is not copied")
def templates_duplicate(request, template_id: int, payload: DuplicateIn | None = Body(None)):
    template = _template(request, template_id)
    payload = payload or DuplicateIn()
    version = None
    if payload.version is not None:
        version = services.version_get(template=template, number=payload.version)
        if version is None:
            raise HttpError(404, f"template {template_id} has no version {payload.version}")
    copy = services.template_duplicate(template=template, actor=actor(request), name=payload.name, slug=payload.slug,
                                       version=version, subject=payload.subject, preheader=payload.preheader)
    return Status(201, _template_out(copy))


@router.delete("/{template_id}", response={204: None}, summary="Archive a template")
def templates_archive(request, template_id: int):
    services.template_archive(template=_template(request, template_id), actor=actor(request))
    return Status(204, None)


# --- versions ---------------------------------------------------------------------------------

@router.get("/{template_id}/versions", response=list[VersionOut], summary="Every version, newest first")
def versions_list(request, template_id: int):
    return [_version_out(v) for v in services.versions_of(template=_template(request, template_id))]


@router.post("/{template_id}/versions", response={200: VersionOut, 400: ProblemOut},
             summary="Edit: changes the newest version while it is an unsubmitted draft, else starts a new draft")
def versions_edit(request, template_id: int, payload: VersionEditIn):
    template = _template(request, template_id)
    base = None
    if payload.base_version is not None:
        base = services.version_get(template=template, number=payload.base_version)
        if base is None:
            raise HttpError(404, f"template {template_id} has no version {payload.base_version}")
    layout: Any = services.KEEP
    if payload.remove_layout:
        layout = None
    elif payload.layout_id is not None:
        layout = payload.layout_id
    version = services.version_edit(template=template, actor=actor(request), subject=payload.subject,
                                    preheader=payload.preheader, html=payload.html, text=payload.text,
                                    blocks=payload.blocks, layout=layout, note=payload.note, base=base)
    return _version_out(version)


@router.get("/{template_id}/versions/{number}", response=VersionOut, summary="One version")
def versions_get(request, template_id: int, number: int):
    return _version_out(_version(request, template_id, number))


@router.post("/{template_id}/versions/{number}/submit", response={200: VersionOut, 400: ProblemOut},
             summary="Submit a draft for approval (marketing email needs the unsubscribe link and postal address)")
def versions_submit(request, template_id: int, number: int):
    return _version_out(services.version_submit(version=_version(request, template_id, number), actor=actor(request)))


@router.post("/{template_id}/versions/{number}/approve", response={200: VersionOut, 400: ProblemOut},
             summary="Approve a pending version (not for high-risk templates: compliance approves those in the UI)")
def versions_approve(request, template_id: int, number: int):
    version = services.version_approve(version=_version(request, template_id, number), api_key=request.api_key)
    return _version_out(version)


@router.post("/{template_id}/versions/{number}/reject", response={200: VersionOut, 400: ProblemOut},
             summary="Reject a pending version with a reason")
def versions_reject(request, template_id: int, number: int, payload: RejectIn):
    version = services.version_reject(version=_version(request, template_id, number), api_key=request.api_key,
                                      reason=payload.reason)
    return _version_out(version)


@router.get("/{template_id}/diff", response=list[DiffOut], summary="Unified diff per field from version a to b")
def versions_diff(request, template_id: int, a: int, b: int):
    return services.versions_diff(a=_version(request, template_id, a), b=_version(request, template_id, b))


@router.post("/{template_id}/versions/{number}/preview", response={200: PreviewOut, 400: ProblemOut},
             summary="Render a version for a contact, or for the sample person (stage, role, segments may be set)")
def versions_preview(request, template_id: int, number: int, payload: PreviewIn):
    from leadflow.messaging.rendering import version_lint

    version = _version(request, template_id, number)
    contact = _contact(request, payload.contact_id)
    rendered = services.version_preview(
        version=version, contact=contact, context=payload.context,
        sample=services.sample_from(stage=payload.stage, role=payload.role, segments=payload.segments))
    return {"subject": rendered.subject, "preheader": rendered.preheader, "html": rendered.html,
            "text": rendered.text, "warnings": version_lint(version=version)}


@router.post("/{template_id}/versions/{number}/test-send", response={202: TestSendOut, 400: ProblemOut},
             summary="Queue a test of this version (drafts too) to any address; the subject starts with [Test]")
def versions_test_send(request, template_id: int, number: int, payload: TestSendIn):
    version = _version(request, template_id, number)
    message = services.test_send(version=version, to_email=payload.to_email, actor=actor(request),
                                 contact=_contact(request, payload.contact_id))
    return Status(202, {"message_id": message.pk, "to_email": message.to_email, "status": message.status})
