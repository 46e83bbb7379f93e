"""Segment pages: the list, the builder (no JSON needed, live count while editing), a segment's
members, history and versions, and static lists filled by hand or by CSV."""

from __future__ import annotations

import datetime as dt

import orjson
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.lifecycle.models import DEFAULT_STAGES
from leadflow.segments import language
from leadflow.segments import selectors as segment_selectors
from leadflow.segments import services as segment_services
from leadflow.segments.preview import segment_preview
from leadflow.tracking.models import Form, LeadMagnet
from leadflow.tracking.sources import CHANNEL_LABELS
from leadflow.web.views import _actor, _page, workspace_view

MEMBERS_PER_PAGE = 50


def _segment(request: HttpRequest, segment_id: int):
    segment = segment_selectors.segment_get(workspace=request.workspace, segment_id=segment_id)
    if segment is None:
        raise Http404("no such segment")
    return segment


@workspace_view()
def segments_list(request: HttpRequest) -> HttpResponse:
    segments = list(segment_selectors.segment_list(workspace=request.workspace))
    counts = segment_selectors.segment_member_counts(segments=segments)
    for segment in segments:
        segment.member_count = counts.get(segment.pk, 0)
    return render(request, "web/segments/list.html", {"section": "segments", "segments": segments})


def _builder_options(request: HttpRequest) -> dict:
    """What the builder offers in its menus: fields by kind, ops by kind, the workspace's magnets,
    forms, segments and stages."""
    fields = {"text": list(language.TEXT_COLUMNS), "number": list(language.NUMBER_COLUMNS),
              "date": list(language.DATE_COLUMNS), "owner": ["owner"],
              "company": [f"company.{c}" for c in language.COMPANY_TEXT_COLUMNS],
              "touch": list(language.UTM_ALIASES) + [f"latest_touch.{k}" for k in language.TOUCH_KEYS]}
    return {
        "fields": fields,
        "ops": {kind: list(ops) for kind, ops in language.FIELD_KIND_OPS.items()},
        "magnets": list(LeadMagnet.objects.filter(workspace=request.workspace, archived_at__isnull=True)
                        .order_by("name").values("slug", "name")),
        "forms": list(Form.objects.filter(workspace=request.workspace, archived_at__isnull=True)
                      .order_by("name").values("slug", "name")),
        "segments": [{"slug": s.slug, "name": s.name}
                     for s in segment_selectors.segment_list(workspace=request.workspace)],
        "stages": [{"value": s["key"], "label": s["label"]} for s in DEFAULT_STAGES],
        "channels": [{"value": k, "label": v} for k, v in CHANNEL_LABELS.items()],
    }


@workspace_view(edit=True)
def segment_edit(request: HttpRequest, segment_id: int | None = None) -> HttpResponse:
    segment = _segment(request, segment_id) if segment_id else None
    error = None
    if request.method == "POST":
        name = request.POST.get("name", "")
        kind = request.POST.get("kind", "dynamic") if segment is None else segment.kind
        raw = request.POST.get("definition", "").strip()
        try:
            definition = orjson.loads(raw) if raw and kind == "dynamic" else None
        except orjson.JSONDecodeError as exc:
            error = f"the filter is not valid JSON: {exc}"
        else:
            try:
                if segment is None:
                    segment = segment_services.segment_create(workspace=request.workspace, name=name, kind=kind,
                                                              definition=definition, actor=_actor(request))
                    messages.success(request, f"Segment “{segment.name}” created.")
                else:
                    segment_services.segment_update(segment=segment, actor=_actor(request), name=name,
                                                    definition=definition if kind == "dynamic" else None)
                    messages.success(request, "Saved as a new version.")
                return redirect("web:segment", segment.pk)
            except ServiceError as exc:
                error = str(exc)
        initial = {"name": name, "kind": kind, "definition": raw}
    else:
        initial = {"name": segment.name if segment else "", "kind": segment.kind if segment else "dynamic",
                   "definition": orjson.dumps(segment.definition).decode() if segment and segment.definition else ""}
    return render(request, "web/segments/edit.html", {
        "section": "segments", "segment": segment, "initial": initial, "error": error,
        "options": _builder_options(request),
    })


@workspace_view()
@require_POST
def segment_preview_view(request: HttpRequest) -> JsonResponse:
    """The builder's live count: posts the filter as JSON, answers count and sample (or the error)."""
    try:
        definition = orjson.loads(request.body or b"null")
    except orjson.JSONDecodeError as exc:
        return JsonResponse({"error": f"not JSON: {exc}", "path": ""}, status=400)
    try:
        result = segment_preview(workspace=request.workspace, definition=definition, limit=10)
    except language.FilterError as exc:
        return JsonResponse({"error": exc.reason, "path": exc.path}, status=400)
    except ServiceError as exc:
        return JsonResponse({"error": str(exc), "path": ""}, status=400)
    return JsonResponse(result)


@workspace_view()
def segment_detail(request: HttpRequest, segment_id: int) -> HttpResponse:
    segment = _segment(request, segment_id)
    members = (segment_selectors.segment_members(segment=segment).select_related("contact__company")
               .order_by("-since", "-pk"))
    today = clock.now().date()
    history = segment_selectors.segment_history(segment=segment, start=today - dt.timedelta(days=29), end=today)
    return render(request, "web/segments/detail.html", {
        "section": "segments", "segment": segment, "page": _page(request, members, MEMBERS_PER_PAGE),
        "history": history, "versions": segment_selectors.segment_versions(segment=segment)[:20],
        "definition": orjson.dumps(segment.definition, option=orjson.OPT_INDENT_2).decode()
        if segment.definition else "",
    })


@workspace_view()
def segment_export(request: HttpRequest, segment_id: int) -> StreamingHttpResponse:
    segment = _segment(request, segment_id)
    response = StreamingHttpResponse(segment_selectors.segment_members_csv(segment=segment),
                                     content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{segment.slug}.csv"'
    return response


@workspace_view(edit=True)
@require_POST
def segment_members_change(request: HttpRequest, segment_id: int) -> HttpResponse:
    segment = _segment(request, segment_id)
    remove = request.POST.get("action") == "remove"
    try:
        if request.FILES.get("file"):
            report = segment_services.segment_members_import(segment=segment, file=request.FILES["file"],
                                                             actor=_actor(request), remove=remove)
        else:
            emails = [e.strip() for e in request.POST.get("emails", "").replace(",", "\n").splitlines() if e.strip()]
            change = segment_services.segment_members_remove if remove else segment_services.segment_members_add
            report = change(segment=segment, actor=_actor(request), emails=emails)
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _report_text(report, remove))
    return redirect("web:segment", segment.pk)


def _report_text(report, remove: bool) -> str:
    done = len(report.changed)
    text = f"{'Removed' if remove else 'Added'} {done} contact{'s' if done != 1 else ''}"
    if report.unchanged:
        text += f"; {len(report.unchanged)} already {'out' if remove else 'in'}"
    if report.unknown:
        text += f"; {len(report.unknown)} not found"
    return text + "."


@workspace_view(edit=True)
@require_POST
def segment_archive(request: HttpRequest, segment_id: int) -> HttpResponse:
    segment = _segment(request, segment_id)
    segment_services.segment_archive(segment=segment, actor=_actor(request))
    messages.success(request, f"Segment “{segment.name}” archived.")
    return redirect("web:segments")
