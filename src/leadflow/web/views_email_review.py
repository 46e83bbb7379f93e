"""Email → Review: the messages whose send was interrupted when they may have gone out, and the
three decisions a person makes about them (resend, mark as sent, dismiss), for the ones ticked or
for every one of a broadcast or journey. The decisions are `leadflow.messaging.review`'s."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from leadflow.core.services import ServiceError
from leadflow.journeys.selectors import journey_id_of_source
from leadflow.messaging import review as services
from leadflow.web.views import _actor, _page, workspace_view

PER_PAGE = 50


def _filter(data) -> dict:
    """The broadcast or journey the list is narrowed to (`?broadcast=ID` / `?journey=ID`)."""
    for name, key in (("broadcast", "broadcast_id"), ("journey", "journey_id")):
        raw = str(data.get(name, "") or "").strip()
        if raw.isdigit():
            return {key: int(raw)}
    return {}


def _query(selection: dict) -> str:
    if "broadcast_id" in selection:
        return f"?broadcast={selection['broadcast_id']}"
    if "journey_id" in selection:
        return f"?journey={selection['journey_id']}"
    return ""


@workspace_view()
def review_list(request: HttpRequest) -> HttpResponse:
    selection = _filter(request.GET)
    page = _page(request, services.review_messages(workspace=request.workspace, **selection), PER_PAGE)
    items = list(page.object_list)
    reasons = services.review_reasons(messages=items)
    sources = services.review_sources(workspace=request.workspace)
    journeys = {s["id"]: s["name"] for s in sources if s["kind"] == "journey"}
    rows = []
    for m in items:
        journey_id = journey_id_of_source(m.source)
        rows.append({"message": m, "why": reasons[m.pk], "journey_id": journey_id,
                     "journey_name": journeys.get(journey_id, "")})
    current = next((s for s in sources if (s["kind"] == "broadcast" and s["id"] == selection.get("broadcast_id"))
                    or (s["kind"] == "journey" and s["id"] == selection.get("journey_id"))), None)
    return render(request, "web/email/review/list.html", {
        "section": "email", "subnav": "review", "page": page, "rows": rows, "sources": sources,
        "selection": selection, "current": current, "total": page.paginator.count,
        "broadcast_id": selection.get("broadcast_id"), "journey_id": selection.get("journey_id")})


@workspace_view(edit=True)
@require_POST
def review_act(request: HttpRequest) -> HttpResponse:
    post = request.POST
    selection = _filter(post)
    action = post.get("action", "")
    back = reverse("web:email-review") + _query(selection)
    if post.get("scope") == "all":
        chosen = selection or {"everything": True}
    else:
        ids = post.getlist("ids")
        if not ids:
            messages.error(request, "Tick the messages to act on, or choose every message in the list.")
            return redirect(back)
        chosen = {"message_ids": ids}
    try:
        done = services.review_act(action=action, workspace=request.workspace, actor=_actor(request),
                                   reason=post.get("reason", ""), **chosen)
    except ServiceError as exc:
        messages.error(request, str(exc))
        return redirect(back)
    label = services.ACTION_LABELS[done.action]
    follow = " They go out with the next dispatcher run, through the consent gate." if done.action == "resend" else ""
    messages.success(request, f"{done.count} message{'s' if done.count != 1 else ''} {label}.{follow}")
    return redirect(back)
