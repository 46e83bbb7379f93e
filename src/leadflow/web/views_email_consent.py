"""Email consent pages: the suppression list (search, add, lift, CSV upload) and the subscription
topics (list and editor).

Who may do what: everyone in the workspace may look; admins, marketers and compliance may add
suppressions and edit topics (adding a suppression only ever stops mail); only admins and
compliance may lift a suppression, because that resumes mail to an address that bounced,
complained or asked to be left alone.
"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from leadflow.consent import selectors, services
from leadflow.consent.models import SuppressionReason, TopicMode
from leadflow.contacts.imports import ImportFileError
from leadflow.core.models import Role
from leadflow.core.services import ServiceError
from leadflow.web.templatetags.email_tags import actor_names
from leadflow.web.views import _actor, _forbidden, _page, workspace_view

SUPPRESSIONS_PER_PAGE = 50
CAN_SUPPRESS = {Role.ADMIN, Role.MARKETER, Role.COMPLIANCE}
CAN_LIFT = {Role.ADMIN, Role.COMPLIANCE}
CAN_EDIT_TOPICS = {Role.ADMIN, Role.MARKETER, Role.COMPLIANCE}


def _allowed(request: HttpRequest, roles: set[str]) -> bool:
    return request.role in roles


# --- suppressions -----------------------------------------------------------------------------

@workspace_view()
def suppressions(request: HttpRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()
    reason = request.GET.get("reason", "")
    if reason not in SuppressionReason.values:
        reason = ""
    lifted = request.GET.get("lifted") == "1"
    rows = selectors.suppression_search(workspace_id=request.workspace.pk, q=q, reason=reason,
                                        lifted=lifted).order_by("-created_at", "-pk")
    counts = selectors.suppression_counts(workspace_id=request.workspace.pk)
    page = _page(request, rows, SUPPRESSIONS_PER_PAGE)
    names = actor_names([a for s in page.object_list for a in (s.created_by, s.lifted_by or "")])
    return render(request, "web/email/consent/suppressions.html", {
        "section": "email", "subnav": "suppressions", "page": page, "actor_names": names, "q": q, "reason": reason,
        "lifted": lifted, "reasons": SuppressionReason.choices,
        "reason_counts": [(value, label, counts.get(value, 0)) for value, label in SuppressionReason.choices],
        "can_suppress": _allowed(request, CAN_SUPPRESS), "can_lift": _allowed(request, CAN_LIFT),
    })


@workspace_view()
@require_POST
def suppression_add(request: HttpRequest) -> HttpResponse:
    if not _allowed(request, CAN_SUPPRESS):
        return _forbidden(request)
    try:
        row = services.suppression_add(workspace_id=request.workspace.pk, email=request.POST.get("email", ""),
                                       reason=request.POST.get("reason") or SuppressionReason.MANUAL,
                                       detail=request.POST.get("detail", "").strip(), actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{row.email} is suppressed." if row.was_created
                         else f"{row.email} was already suppressed.")
    return redirect("web:email-suppressions")


@workspace_view()
@require_POST
def suppression_lift(request: HttpRequest) -> HttpResponse:
    if not _allowed(request, CAN_LIFT):
        return _forbidden(request)
    try:
        row = services.suppression_lift(workspace_id=request.workspace.pk, email=request.POST.get("email", ""),
                                        actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{row.email} may receive email again.")
    return redirect("web:email-suppressions")


@workspace_view()
@require_POST
def suppressions_import(request: HttpRequest) -> HttpResponse:
    if not _allowed(request, CAN_SUPPRESS):
        return _forbidden(request)
    upload = request.FILES.get("file")
    if upload is None:
        messages.error(request, "Choose a CSV file to upload.")
        return redirect("web:email-suppressions")
    try:
        report = services.suppressions_import(workspace_id=request.workspace.pk, file=upload, actor=_actor(request),
                                              reason=request.POST.get("reason") or SuppressionReason.MANUAL,
                                              detail=request.POST.get("detail", "").strip())
    except (ImportFileError, ServiceError) as exc:
        messages.error(request, str(exc))
        return redirect("web:email-suppressions")
    text = f"Suppressed {report.added} address{'es' if report.added != 1 else ''}"
    if report.already:
        text += f"; {report.already} already suppressed or repeated"
    if report.invalid:
        shown = ", ".join(f"line {r['row']}: {r['reason']}" for r in report.invalid[:5])
        text += f"; {len(report.invalid)} not valid ({shown}{'…' if len(report.invalid) > 5 else ''})"
    messages.success(request, text + ".")
    return redirect("web:email-suppressions")


# --- topics -----------------------------------------------------------------------------------

def _topic(request: HttpRequest, topic_id: int):
    topic = selectors.topic_get(workspace_id=request.workspace.pk, topic_id=topic_id)
    if topic is None:
        raise Http404("no such topic")
    return topic


@workspace_view()
def topics(request: HttpRequest) -> HttpResponse:
    return render(request, "web/email/consent/topics.html", {
        "section": "email", "subnav": "topics",
        "topics": list(selectors.topic_list(workspace_id=request.workspace.pk, archived=None)),
        "can_edit_topics": _allowed(request, CAN_EDIT_TOPICS),
    })


@workspace_view()
def topic_edit(request: HttpRequest, topic_id: int | None = None) -> HttpResponse:
    if not _allowed(request, CAN_EDIT_TOPICS):
        return _forbidden(request)
    topic = _topic(request, topic_id) if topic_id else None
    error = None
    if request.method == "POST":
        data = {"name": request.POST.get("name", ""), "description": request.POST.get("description", ""),
                "mode": request.POST.get("mode", TopicMode.OPT_OUT),
                "double_opt_in": request.POST.get("double_opt_in") == "on",
                "double_opt_in_countries": request.POST.get("double_opt_in_countries", "")}
        try:
            if topic is None:
                topic = services.topic_create(workspace_id=request.workspace.pk, actor=_actor(request),
                                              slug=request.POST.get("slug", ""), **data)
                messages.success(request, f"Topic “{topic.name}” created.")
            else:
                services.topic_update(topic=topic, actor=_actor(request), **data)
                messages.success(request, f"Topic “{topic.name}” saved.")
            return redirect("web:email-topics")
        except ServiceError as exc:
            error = str(exc)
        initial = {**data, "slug": request.POST.get("slug", "")}
    else:
        initial = {"name": topic.name if topic else "", "slug": topic.slug if topic else "",
                   "description": topic.description if topic else "",
                   "mode": topic.mode if topic else TopicMode.OPT_OUT,
                   "double_opt_in": topic.double_opt_in if topic else False,
                   "double_opt_in_countries": ", ".join(topic.double_opt_in_countries) if topic else ""}
    return render(request, "web/email/consent/topic_edit.html", {
        "section": "email", "subnav": "topics", "topic": topic, "initial": initial, "error": error,
        "modes": TopicMode.choices,
        "queued": selectors.messages_on_topic(workspace_id=request.workspace.pk, slug=topic.slug) if topic else 0,
    }, status=400 if error else 200)


@workspace_view()
@require_POST
def topic_archive(request: HttpRequest, topic_id: int) -> HttpResponse:
    if not _allowed(request, CAN_EDIT_TOPICS):
        return _forbidden(request)
    topic = _topic(request, topic_id)
    if request.POST.get("restore") == "1":
        services.topic_restore(topic=topic, actor=_actor(request))
        messages.success(request, f"Topic “{topic.name}” restored.")
    else:
        services.topic_archive(topic=topic, actor=_actor(request))
        messages.success(request, f"Topic “{topic.name}” archived: it is no longer offered, "
                                  "and messages on it are not sent.")
    return redirect("web:email-topics")
