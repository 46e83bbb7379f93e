"""Email content pages: templates list (with each template's sent, open and click rates), the
editor with its live preview and the figures per version, duplicating a template, versions with
diff, a version's page (submit, approve, reject, test send), the approval queue and layouts.

Previews are shown in `<iframe sandbox srcdoc=…>`: the marketer's HTML runs with no scripts and
no access to the app's origin.
"""

from __future__ import annotations

import orjson
from django.contrib import messages
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from leadflow.consent.models import Topic
from leadflow.core import clock
from leadflow.contacts import selectors as contact_selectors
from leadflow.core.models import Role
from leadflow.core.services import ServiceError
from leadflow.lifecycle.models import DEFAULT_STAGES
from leadflow.messaging import content as services
from leadflow.messaging import rendering, stats
from leadflow.messaging.models import TemplateKind, VersionStatus
from leadflow.segments import selectors as segment_selectors
from leadflow.web.templatetags.email_tags import actor_names
from leadflow.web.views import _actor, workspace_view

CONTACT_MATCHES = 10


def _template(request: HttpRequest, template_id: int):
    template = services.template_get(workspace=request.workspace, template_id=template_id)
    if template is None:
        raise Http404("no such template")
    return template


def _version(request: HttpRequest, template_id: int, number: int):
    template = _template(request, template_id)
    version = services.version_get(template=template, number=number)
    if version is None:
        raise Http404("no such version")
    return template, version


def _submitters(workspace_id: int, versions) -> dict[int, str]:
    """{version id: actor who submitted it} from the audit log, in one query: a version keeps who
    wrote it (`created_by`), and someone else may submit a draft they edited."""
    from leadflow.core.models import AuditEntry

    targets = {f"email_version:{v.pk}": v.pk for v in versions if v.submitted_at is not None}
    if not targets:
        return {}
    rows = (AuditEntry.objects.filter(workspace_id=workspace_id, action="email_version.submit", target__in=targets)
            .order_by("at", "pk").values_list("target", "actor"))
    return {targets[target]: actor for target, actor in rows}


def _contact(request: HttpRequest, raw: str | None):
    if not raw or not str(raw).strip().isdigit():
        return None
    return contact_selectors.contact_get(workspace=request.workspace, contact_id=int(raw))


def _sample(data) -> dict:
    return services.sample_from(stage=data.get("stage", ""), role=data.get("role", ""),
                                segments=data.get("segments", ""))


def _options(request: HttpRequest) -> dict:
    """What the editor offers: layouts, topics, segments and stages (for blocks and the sample)."""
    return {
        "layouts": [{"id": layout.pk, "name": layout.name}
                    for layout in services.layout_list(workspace=request.workspace)],
        "topics": list(Topic.objects.filter(workspace=request.workspace, archived_at__isnull=True)
                       .values("slug", "name")),
        "segments": [{"slug": s.slug, "name": s.name}
                     for s in segment_selectors.segment_list(workspace=request.workspace)],
        "stages": [{"value": s["key"], "label": s["label"]} for s in DEFAULT_STAGES],
        "by": [{"value": "stage", "label": "lifecycle stage"}, {"value": "role", "label": "role / persona"},
               {"value": "segment", "label": "segment"}, {"value": "stage+role", "label": "stage × role"}],
    }


def _blocks_json(blocks) -> str:
    return orjson.dumps(blocks or {}, option=orjson.OPT_INDENT_2).decode()


def _parse_blocks(raw: str):
    raw = (raw or "").strip()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(f"blocks: not valid JSON ({exc})") from None


def _layout_id(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


def _can_decide(request: HttpRequest, version) -> str | None:
    decider = services.decider_for(workspace_id=request.workspace.pk, user=request.user)
    return services.version_decision_refusal(version=version, decider=decider)


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _with_pcts(figures: dict) -> dict:
    return {**figures, **{f"{name}_pct": _pct(figures.get(name)) for name in (
        "open_rate", "click_rate", "bounce_rate", "unsubscribe_rate", "complaint_rate", "click_to_open")}}


def _template_figures(template) -> dict | None:
    """A template's statistics in total and per version (people's opens and clicks only)."""
    if template is None or template.pk is None:
        return None
    figures = stats.template_stats(template=template)
    return {"total": _with_pcts(figures["total"]), "versions": [_with_pcts(row) for row in figures["versions"]]}


# --- templates ------------------------------------------------------------------------------------

@workspace_view()
def templates_list(request: HttpRequest) -> HttpResponse:
    archived = request.GET.get("archived") == "1"
    q = request.GET.get("q", "").strip()
    templates = list(services.template_list(workspace=request.workspace, archived=archived, q=q))
    figures = stats.templates_summary(workspace_id=request.workspace.pk, template_ids=[t.pk for t in templates])
    for t in templates:
        t.figures = _with_pcts(figures[t.pk]) if t.pk in figures else None
    return render(request, "web/email/content/templates_list.html", {
        "section": "email", "subnav": "templates", "templates": templates, "archived": archived, "q": q,
        "pending": services.approvals_pending(workspace=request.workspace).count()})


def _form_initial(template=None, version=None, post=None) -> dict:
    if post is not None:
        return {"name": post.get("name", ""), "kind": post.get("kind", "marketing"), "topic": post.get("topic", ""),
                "high_risk": post.get("high_risk") == "on", "subject": post.get("subject", ""),
                "preheader": post.get("preheader", ""), "html": post.get("html", ""), "text": post.get("text", ""),
                "layout_id": _layout_id(post.get("layout_id")), "blocks": post.get("blocks", ""),
                "note": post.get("note", "")}
    if template is None:
        return {"name": "", "kind": "marketing", "topic": "", "high_risk": False, "subject": "", "preheader": "",
                "html": "<p>Hi {{ contact.first_name | default(\"there\") }},</p>\n\n<p></p>\n", "text": "",
                "layout_id": None, "blocks": "{}", "note": ""}
    return {"name": template.name, "kind": template.kind, "topic": template.topic, "high_risk": template.high_risk,
            "subject": version.subject, "preheader": version.preheader, "html": version.html, "text": version.text,
            "layout_id": version.layout_id, "blocks": _blocks_json(version.blocks),
            "note": version.note if version.status == VersionStatus.DRAFT else ""}


def _editor(request: HttpRequest, *, template, version, initial: dict, error: str | None = None, status: int = 200):
    return render(request, "web/email/content/template_edit.html", {
        "section": "email", "subnav": "templates", "template": template, "version": version, "initial": initial,
        "error": error, "options": _options(request), "kinds": TemplateKind.choices,
        "editing_in_place": version is not None and version.status == VersionStatus.DRAFT and version.submitted_at is None,
        "stages": DEFAULT_STAGES, "figures": _template_figures(template),
    }, status=status)


@workspace_view(edit=True)
def template_new(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _editor(request, template=None, version=None, initial=_form_initial())
    post = request.POST
    initial = _form_initial(post=post)
    try:
        template = services.template_create(
            workspace=request.workspace, name=post.get("name", ""), kind=post.get("kind", "marketing"),
            topic=post.get("topic", ""), high_risk=post.get("high_risk") == "on", actor=_actor(request),
            subject=post.get("subject", ""), preheader=post.get("preheader", ""), html=post.get("html", ""),
            text=post.get("text", ""), blocks=_parse_blocks(post.get("blocks", "")),
            layout=_layout_id(post.get("layout_id")))
    except ServiceError as exc:
        return _editor(request, template=None, version=None, initial=initial, error=str(exc), status=400)
    messages.success(request, f"Template “{template.name}” created as a draft (version 1).")
    return redirect("web:email-template", template.pk)


@workspace_view()
def template_edit(request: HttpRequest, template_id: int) -> HttpResponse:
    template = _template(request, template_id)
    latest = services.version_latest(template=template)
    if request.method != "POST":
        return _editor(request, template=template, version=latest, initial=_form_initial(template, latest))
    if not request.can_edit:
        return render(request, "web/forbidden.html", {"role": request.role}, status=403)
    post = request.POST
    try:
        with transaction.atomic():  # the settings and the content are saved together or not at all
            template = services.template_update(
                template=template, actor=_actor(request), role=request.role, name=post.get("name"),
                kind=post.get("kind"), topic=post.get("topic", ""), high_risk=post.get("high_risk") == "on")
            version = services.version_edit(
                template=template, actor=_actor(request), subject=post.get("subject", ""),
                preheader=post.get("preheader", ""), html=post.get("html", ""), text=post.get("text", ""),
                blocks=_parse_blocks(post.get("blocks", "")), layout=_layout_id(post.get("layout_id")),
                note=post.get("note", ""))
    except ServiceError as exc:
        template.refresh_from_db()
        return _editor(request, template=template, version=latest, initial=_form_initial(post=post), error=str(exc),
                       status=400)
    if version.pk == latest.pk and version.status != VersionStatus.DRAFT:
        messages.success(request, "Nothing changed in the content.")
    else:
        messages.success(request, f"Saved as version {version.number} (draft).")
    return redirect("web:email-template", template.pk)


@workspace_view()
@require_POST
def template_live_preview(request: HttpRequest, template_id: int | None = None) -> JsonResponse:
    """The editor's live preview: the unsaved form content rendered for the chosen contact or the
    sample person. Answers JSON {subject, preheader, html, text, warnings} or {error}."""
    template = _template(request, template_id) if template_id else None
    post = request.POST
    if template is None:
        from leadflow.messaging.models import Template

        template = Template(workspace=request.workspace, name="preview", slug="preview",
                            kind=post.get("kind") or "marketing")
    contact = _contact(request, post.get("contact_id"))
    try:
        rendered, warnings = services.draft_preview(
            template=template, subject=post.get("subject", ""), preheader=post.get("preheader", ""),
            html=post.get("html", ""), text=post.get("text", ""), blocks=_parse_blocks(post.get("blocks", "")),
            layout=_layout_id(post.get("layout_id")), contact=contact, sample=_sample(post))
    except ServiceError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"subject": rendered.subject, "preheader": rendered.preheader, "html": rendered.html,
                         "text": rendered.text, "warnings": warnings,
                         "contact": contact.email if contact is not None else None})


@workspace_view(edit=True)
@require_POST
def template_archive(request: HttpRequest, template_id: int) -> HttpResponse:
    template = services.template_archive(template=_template(request, template_id), actor=_actor(request))
    messages.success(request, f"Template “{template.name}” archived.")
    return redirect("web:email-templates")


@workspace_view(edit=True)
@require_POST
def template_duplicate(request: HttpRequest, template_id: int) -> HttpResponse:
    """Copy the template (the newest version, or `version`) as a new template whose version 1 is a
    draft: approval is never copied. An optional `name`; by default "<name> (copy)"."""
    template = _template(request, template_id)
    version = None
    raw = request.POST.get("version", "").strip()
    if raw:
        if not raw.isdigit():
            raise Http404("no such version")
        _, version = _version(request, template_id, int(raw))
    try:
        copy = services.template_duplicate(template=template, actor=_actor(request), version=version,
                                           name=request.POST.get("name", "").strip() or None)
    except ServiceError as exc:
        messages.error(request, str(exc))
        if version is not None:
            return redirect("web:email-version", template.pk, version.number)
        return redirect("web:email-template", template.pk)
    messages.success(request, f"“{copy.name}” created as a copy of “{template.name}”. Its version 1 is a draft: "
                              "change it, then submit it for approval.")
    return redirect("web:email-template", copy.pk)


@workspace_view()
def contact_search(request: HttpRequest) -> JsonResponse:
    """The preview's contact picker: up to 10 contacts of this workspace matching `q`."""
    q = request.GET.get("q", "").strip()
    if len(q) < 2:
        return JsonResponse({"items": []})
    found = contact_selectors.contact_search(workspace=request.workspace, q=q).order_by("-pk")[:CONTACT_MATCHES]
    return JsonResponse({"items": [{"id": c.pk, "label": f"{c.email or c.user_id or 'anonymous'}"
                                                       f"{' — ' + c.name if c.name else ''} (#{c.pk})"}
                                   for c in found]})


# --- versions -------------------------------------------------------------------------------------

@workspace_view()
def template_versions(request: HttpRequest, template_id: int) -> HttpResponse:
    template = _template(request, template_id)
    versions = list(services.versions_of(template=template))
    diff = None
    a_raw, b_raw = request.GET.get("a", ""), request.GET.get("b", "")
    if a_raw.isdigit() and b_raw.isdigit():
        by_number = {v.number: v for v in versions}
        a, b = by_number.get(int(a_raw)), by_number.get(int(b_raw))
        if a is None or b is None:
            raise Http404("no such version")
        fields = services.versions_diff(a=a, b=b)
        diff = {"a": a, "b": b, "fields": fields, "changed": any(f["changed"] for f in fields)}
    elif len(versions) >= 2:
        a_raw, b_raw = str(versions[1].number), str(versions[0].number)
    names = actor_names([a for v in versions for a in (v.created_by, v.decided_by)])
    return render(request, "web/email/content/versions.html", {
        "section": "email", "subnav": "templates", "template": template, "versions": versions, "diff": diff,
        "a": a_raw, "b": b_raw, "actor_names": names})


@workspace_view()
def version_detail(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    template, version = _version(request, template_id, number)
    contact = _contact(request, request.GET.get("contact_id"))
    error = None
    rendered = None
    try:
        rendered = services.version_preview(version=version, contact=contact, sample=_sample(request.GET))
    except ServiceError as exc:
        error = str(exc)
    refusal = _can_decide(request, version) if version.status == VersionStatus.PENDING else None
    submitted_by = _submitters(request.workspace.pk, [version]).get(version.pk, "")
    names = actor_names([version.created_by, version.decided_by, submitted_by])
    return render(request, "web/email/content/version_detail.html", {
        "submitted_by": submitted_by, "actor_names": names,
        "section": "email", "subnav": "templates", "template": template, "version": version, "rendered": rendered,
        "error": error, "contact": contact, "refusal": refusal, "stages": DEFAULT_STAGES,
        "sample": _sample(request.GET), "warnings": rendering.version_lint(version=version),
        "default_to": request.user.email or ""})


def _back(request: HttpRequest, template, version) -> HttpResponse:
    target = request.POST.get("next", "")
    if target == "approvals":
        return redirect("web:email-approvals")
    return redirect("web:email-version", template.pk, version.number)


@workspace_view(edit=True)
@require_POST
def version_submit(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    template, version = _version(request, template_id, number)
    try:
        services.version_submit(version=version, actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Version {version.number} submitted for approval.")
    return _back(request, template, version)


def _not_allowed(request: HttpRequest, reason: str) -> HttpResponse:
    return render(request, "web/email/content/not_allowed.html", {"section": "email", "reason": reason,
                                                                  "role": request.role}, status=403)


def _decide(request: HttpRequest, template_id: int, number: int, *, approve: bool) -> HttpResponse:
    template, version = _version(request, template_id, number)
    if version.status == VersionStatus.PENDING:
        decider = services.decider_for(workspace_id=request.workspace.pk, user=request.user)
        refusal = services.version_decision_refusal(version=version, decider=decider, approving=approve)
        if refusal:
            return _not_allowed(request, refusal)
    try:
        if approve:
            services.version_approve(version=version, user=request.user)
        else:
            services.version_reject(version=version, user=request.user, reason=request.POST.get("reason", ""))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        word = "approved: new sends use it" if approve else "rejected"
        messages.success(request, f"Version {version.number} of “{template.name}” {word}.")
    return _back(request, template, version)


@workspace_view()
@require_POST
def version_approve(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    return _decide(request, template_id, number, approve=True)


@workspace_view()
@require_POST
def version_reject(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    return _decide(request, template_id, number, approve=False)


@workspace_view(edit=True)
@require_POST
def version_edit_from(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    """Start a new draft from an older version (to restore it)."""
    template, version = _version(request, template_id, number)
    try:
        draft = services.version_edit(template=template, actor=_actor(request), base=version,
                                      note=f"from version {version.number}")
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("web:email-version", template.pk, version.number)
    messages.success(request, f"Version {draft.number} (draft) started from version {version.number}.")
    return redirect("web:email-template", template.pk)


@workspace_view(edit=True)
@require_POST
def version_test_send(request: HttpRequest, template_id: int, number: int) -> HttpResponse:
    template, version = _version(request, template_id, number)
    contact = _contact(request, request.POST.get("contact_id"))
    try:
        message = services.test_send(version=version, to_email=request.POST.get("to_email", ""),
                                     actor=_actor(request), contact=contact)
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Test of version {version.number} queued to {message.to_email}.")
    if request.POST.get("next") == "editor":
        return redirect("web:email-template", template.pk)
    return redirect("web:email-version", template.pk, version.number)


# --- approvals ------------------------------------------------------------------------------------

@workspace_view()
def approvals(request: HttpRequest) -> HttpResponse:
    pending = list(services.approvals_pending(workspace=request.workspace))
    decider = services.decider_for(workspace_id=request.workspace.pk, user=request.user)
    submitters = _submitters(request.workspace.pk, pending)
    rows = [{"version": v, "template": v.template, "submitted_by": submitters.get(v.pk) or v.created_by,
             "refusal": services.version_decision_refusal(version=v, decider=decider)} for v in pending]
    return render(request, "web/email/content/approvals.html", {
        "section": "email", "subnav": "approvals", "rows": rows, "is_compliance": request.role == Role.COMPLIANCE,
        "actor_names": actor_names([r["submitted_by"] for r in rows])})


# --- layouts --------------------------------------------------------------------------------------

DEFAULT_LAYOUT = """<table role="presentation" width="100%" cellpadding="0" cellspacing="0">
  <tr><td style="padding:24px;font-family:Arial,sans-serif">
    {{ content }}
  </td></tr>
  <tr><td style="padding:24px;font-family:Arial,sans-serif;font-size:12px;color:#666">
    {{ workspace.name }} · {{ postal_address }}<br>
    <a href="{{ unsubscribe_url }}">Unsubscribe</a> · <a href="{{ preferences_url }}">Email preferences</a>
  </td></tr>
</table>
"""


@workspace_view()
def layouts_list(request: HttpRequest) -> HttpResponse:
    return render(request, "web/email/content/layouts_list.html", {
        "section": "email", "subnav": "layouts", "layouts": list(services.layout_list(workspace=request.workspace))})


def _layout_preview(request: HttpRequest, html: str, text: str) -> str | None:
    """The layout around a placeholder body, for the sample person."""
    from leadflow.messaging.models import Template, TemplateVersion

    template = Template(workspace=request.workspace, name="layout preview", kind="marketing")
    version = TemplateVersion(workspace=request.workspace, template=template, number=0, subject="Layout preview",
                              html="<p><em>The email's content goes here.</em></p>", text="", blocks={},
                              layout_html=html, layout_text=text,
                              submitted_at=clock.now())  # "submitted": render the layout_html given here
    try:
        return rendering.version_render(version=version).html
    except ServiceError:
        return None


@workspace_view()
def layout_edit(request: HttpRequest, layout_id: int | None = None) -> HttpResponse:
    layout = None
    if layout_id is not None:
        layout = services.layout_get(workspace=request.workspace, layout_id=layout_id)
        if layout is None:
            raise Http404("no such layout")
    error = None
    if request.method == "POST":
        if not request.can_edit:
            return render(request, "web/forbidden.html", {"role": request.role}, status=403)
        post = request.POST
        try:
            if layout is None:
                layout = services.layout_create(workspace=request.workspace, name=post.get("name", ""),
                                                html=post.get("html", ""), text=post.get("text", ""),
                                                actor=_actor(request))
                messages.success(request, f"Layout “{layout.name}” created.")
            else:
                services.layout_update(layout=layout, actor=_actor(request), name=post.get("name", ""),
                                       html=post.get("html", ""), text=post.get("text", ""))
                messages.success(request, "Layout saved. Drafts use it at once; submitted versions keep their copy.")
            return redirect("web:email-layout", layout.pk)
        except ServiceError as exc:
            error = str(exc)
        initial = {"name": post.get("name", ""), "html": post.get("html", ""), "text": post.get("text", "")}
    elif layout is not None:
        initial = {"name": layout.name, "html": layout.html, "text": layout.text}
    else:
        initial = {"name": "", "html": DEFAULT_LAYOUT, "text": ""}
    preview = _layout_preview(request, initial["html"], initial["text"]) if layout is not None and not error else None
    return render(request, "web/email/content/layout_edit.html", {
        "section": "email", "subnav": "layouts", "layout": layout, "initial": initial, "error": error,
        "preview": preview}, status=400 if error else 200)


@workspace_view(edit=True)
@require_POST
def layout_delete(request: HttpRequest, layout_id: int) -> HttpResponse:
    layout = services.layout_get(workspace=request.workspace, layout_id=layout_id)
    if layout is None:
        raise Http404("no such layout")
    try:
        services.layout_delete(layout=layout, actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect("web:email-layout", layout.pk)
    messages.success(request, f"Layout “{layout.name}” deleted.")
    return redirect(reverse("web:email-layouts"))
