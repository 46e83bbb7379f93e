"""Broadcast pages: the list, the new/edit form (template, segment, planned time, A/B variants,
share and metric) with "add a subject-line variant", a broadcast's page (each variant's approval
and the recipient and consent-filtered counts before sending, progress, statistics and A/B
results after), the confirm step, and pause/resume/cancel/winner."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template import TemplateDoesNotExist
from django.template.loader import get_template
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_POST

from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.messaging import abtest
from leadflow.messaging import broadcasts as services
from leadflow.messaging.models import Broadcast, Message, SendingServer, Template, TemplateKind
from leadflow.segments.models import Segment
from leadflow.web.templatetags.email_tags import actor_names
from leadflow.web.views import _actor, _page, workspace_view

PER_PAGE = 50
SUBNAV = "web/email/_subnav.html"
TIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"]
VARIANT_FIELDS = ("variant_b", "variant_c", "variant_d")


def _subnav() -> str:
    """The email sub-navigation, when the content pages that own it are there."""
    try:
        get_template(SUBNAV)
        reverse("web:email-templates")
    except (TemplateDoesNotExist, NoReverseMatch):
        return ""
    return SUBNAV


def _context(request: HttpRequest, **extra) -> dict:
    return {"section": "email", "subnav": "broadcasts", "email_subnav": _subnav(), **extra}


def _broadcast(request: HttpRequest, broadcast_id: int) -> Broadcast:
    broadcast = services.broadcast_get(workspace=request.workspace, broadcast_id=broadcast_id)
    if broadcast is None:
        raise Http404("no such broadcast")
    return broadcast


class BroadcastForm(forms.Form):
    """Parses the page; `leadflow.messaging.broadcasts` decides what is valid."""

    name = forms.CharField(max_length=200)
    template = forms.ModelChoiceField(queryset=Template.objects.none(), label="Template (variant A)",
                                      help_text="A marketing template; its approved version is sent.")
    segment = forms.ModelChoiceField(queryset=Segment.objects.none(), label="Segment",
                                     help_text="Its members with an email address when sending starts.")
    scheduled_at = forms.DateTimeField(required=False, input_formats=TIME_FORMATS, label="Planned time (UTC)",
                                       widget=forms.DateTimeInput(attrs={"type": "datetime-local"},
                                                                  format="%Y-%m-%dT%H:%M"),
                                       help_text="Optional; nothing is sent until you confirm.")
    server = forms.ModelChoiceField(queryset=SendingServer.objects.none(), required=False,
                                    empty_label="Workspace default", label="Sending server")
    variant_b = forms.ModelChoiceField(queryset=Template.objects.none(), required=False, empty_label="— none —",
                                       label="A/B test: variant B",
                                       help_text="Another approved template with the same topic: a different "
                                                 "subject or content. Leave empty for no test.")
    variant_c = forms.ModelChoiceField(queryset=Template.objects.none(), required=False, empty_label="— none —",
                                       label="Variant C")
    variant_d = forms.ModelChoiceField(queryset=Template.objects.none(), required=False, empty_label="— none —",
                                       label="Variant D")
    test_share = forms.IntegerField(min_value=1, max_value=99, initial=20, label="Test share (%)",
                                    help_text="This part of the audience is split evenly over the variants; "
                                              "the rest gets the winner.")
    winner_metric = forms.ChoiceField(choices=[(k, m.label) for k, m in abtest.METRICS.items()],
                                      initial="click_rate", label="Winner metric")
    decide_after_hours = forms.FloatField(min_value=0.25, max_value=services.MAX_DECIDE_HOURS, initial=4,
                                          label="Decide after (hours)")

    def __init__(self, *args, workspace, **kwargs):
        super().__init__(*args, **kwargs)
        templates = Template.objects.filter(workspace=workspace, kind=TemplateKind.MARKETING,
                                            archived_at__isnull=True).order_by("name")
        for name in ("template", *VARIANT_FIELDS):
            self.fields[name].queryset = templates
        self.fields["segment"].queryset = Segment.objects.filter(workspace=workspace,
                                                                 archived_at__isnull=True).order_by("name")
        self.fields["server"].queryset = SendingServer.objects.filter(workspace=workspace).order_by("name")

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {"name": data["name"], "template": data["template"], "segment": data["segment"],
                "scheduled_at": data["scheduled_at"], "server": data["server"],
                "variants": [data[f] for f in VARIANT_FIELDS if data.get(f)],
                "test_share": data["test_share"] / 100, "winner_metric": data["winner_metric"],
                "decide_after_hours": data["decide_after_hours"]}


def _initial(broadcast: Broadcast) -> dict:
    variants = services.broadcast_variants(broadcasts=[broadcast])[broadcast.pk]
    initial = {"name": broadcast.name, "template": broadcast.template_id, "segment": broadcast.segment_id,
               "scheduled_at": broadcast.scheduled_at, "server": broadcast.server_id,
               "test_share": round(broadcast.test_share * 100), "winner_metric": broadcast.winner_metric,
               "decide_after_hours": services.broadcast_decide_hours(broadcast)}
    for field, variant in zip(VARIANT_FIELDS, variants[1:]):
        initial[field] = variant.version.template_id
    return initial


@workspace_view()
def broadcasts_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    page = _page(request, services.broadcast_list(workspace=request.workspace, status=status).order_by("-pk"),
                 PER_PAGE)
    items = list(page.object_list)
    progress = dict((row["broadcast_id"], row) for row in Message.objects.filter(
        workspace=request.workspace, broadcast_id__in=[b.pk for b in items]).order_by()
        .values("broadcast_id").annotate(messages=Count("pk"), sent=Count("pk", filter=Q(sent_at__isnull=False)),
                                         clicked=Count("pk", filter=Q(clicked_at__isnull=False))))
    for b in items:
        b.progress = progress.get(b.pk)
    return render(request, "web/email/broadcasts/list.html", _context(
        request, page=page, broadcasts=items, status=status, statuses=Broadcast._meta.get_field("status").choices))


@workspace_view(edit=True)
def broadcast_edit(request: HttpRequest, broadcast_id: int | None = None) -> HttpResponse:
    broadcast = _broadcast(request, broadcast_id) if broadcast_id else None
    error = None
    if broadcast is not None and broadcast.status not in services.EDITABLE:
        messages.error(request, "Only drafts and scheduled broadcasts can be edited.")
        return redirect("web:email-broadcast", broadcast.pk)
    if request.method == "POST":
        form = BroadcastForm(request.POST, workspace=request.workspace)
        if form.is_valid():
            try:
                if broadcast is None:
                    broadcast = services.broadcast_create(workspace=request.workspace, actor=_actor(request),
                                                          **form.service_kwargs())
                    messages.success(request, f"Broadcast “{broadcast.name}” saved as a draft. "
                                              "Check the counts, then confirm.")
                else:
                    services.broadcast_update(broadcast=broadcast, actor=_actor(request), **form.service_kwargs())
                    messages.success(request, "Saved.")
                return redirect("web:email-broadcast", broadcast.pk)
            except ServiceError as exc:
                error = str(exc)
    else:
        form = BroadcastForm(initial=_initial(broadcast) if broadcast else None, workspace=request.workspace)
    return _edit_page(request, broadcast=broadcast, form=form, error=error)


def _edit_page(request: HttpRequest, *, broadcast: Broadcast | None, form: BroadcastForm, error: str | None = None,
               subject_form: dict | None = None, subject_error: str | None = None, status: int = 200) -> HttpResponse:
    approvals = services.broadcast_variant_approvals(broadcast=broadcast) if broadcast is not None else []
    has_test = len(approvals) > 1
    next_label = abtest.LABELS[len(approvals)] if len(approvals) < abtest.MAX_VARIANTS else None
    return render(request, "web/email/broadcasts/edit.html", _context(
        request, broadcast=broadcast, form=form, error=error, approvals=approvals, has_test=has_test,
        next_label=next_label if broadcast is not None and broadcast.status == services.DRAFT else None,
        subject_form=subject_form or {"subject": "", "preheader": ""}, subject_error=subject_error), status=status)


@workspace_view(edit=True)
@require_POST
def broadcast_subject_variant(request: HttpRequest, broadcast_id: int) -> HttpResponse:
    """Add a subject-line variant: variant A's template copied with the subject (and preheader)
    given, submitted for approval and added as the next variant."""
    broadcast = _broadcast(request, broadcast_id)
    subject, preheader = request.POST.get("subject", ""), request.POST.get("preheader", "")
    try:
        variant = services.broadcast_subject_variant_add(broadcast=broadcast, subject=subject,
                                                         preheader=preheader if preheader.strip() else None,
                                                         actor=_actor(request))
    except ServiceError as exc:
        broadcast = _broadcast(request, broadcast_id)
        if broadcast.status not in services.EDITABLE:
            messages.error(request, str(exc))
            return redirect("web:email-broadcast", broadcast.pk)
        form = BroadcastForm(initial=_initial(broadcast), workspace=request.workspace)
        return _edit_page(request, broadcast=broadcast, form=form, subject_error=str(exc),
                          subject_form={"subject": subject, "preheader": preheader}, status=400)
    messages.success(request, f"Variant {variant.label} added with the subject “{variant.version.subject}” and "
                              "submitted for approval. The broadcast can start once every variant is approved.")
    return redirect(reverse("web:email-broadcast-edit", args=[broadcast.pk]) + "#subject-variants")


RATES = {"click_rate": "Click rate", "open_rate": "Open rate", "unsubscribe_rate": "Unsubscribe rate"}


def _pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1%}"


def _detail_context(request: HttpRequest, broadcast: Broadcast) -> dict:
    variants = services.broadcast_variants(broadcasts=[broadcast])[broadcast.pk]
    started = broadcast.started_at is not None
    stats = services.broadcast_stats(broadcast=broadcast) if started else None
    if stats:
        for row in [stats["total"], *stats["groups"]]:
            for rate in RATES:
                row[f"{rate}_pct"] = _pct(row[rate])
    groups = {g["label"]: g for g in (stats or {}).get("groups", [])}
    metric_pct = f"{broadcast.winner_metric}_pct"
    # Before the start, each variant's approval: what starting will pin, or why it cannot start.
    approvals = ({row["label"]: row for row in services.broadcast_variant_approvals(broadcast=broadcast)}
                 if broadcast.status in services.EDITABLE else {})
    variant_rows = [(v, groups.get(v.label), (groups.get(v.label) or {}).get(metric_pct), approvals.get(v.label))
                    for v in variants]
    return _context(
        request, broadcast=broadcast, variants=variants, started=started, stats=stats, variant_rows=variant_rows,
        not_ready=[row for row in approvals.values() if not row["ready"]],
        counts=services.broadcast_counts(broadcast=broadcast, now=clock.now()),
        result=broadcast.result or {}, editable=broadcast.status in services.EDITABLE,
        actor_names=actor_names([(broadcast.result or {}).get("decided_by") or ""]),
        can_pause=broadcast.status in services.RUNNING, can_resume=broadcast.status == services.PAUSED,
        can_cancel=broadcast.status not in (services.CANCELLED, services.DONE),
        can_pick=bool(variants) and broadcast.winner_id is None and broadcast.status in (
            services.TESTING, services.PAUSED) and broadcast.audience_count is not None,
        metric=abtest.METRICS.get(broadcast.winner_metric), metric_name=RATES.get(broadcast.winner_metric, ""))


@workspace_view()
def broadcast_detail(request: HttpRequest, broadcast_id: int) -> HttpResponse:
    broadcast = _broadcast(request, broadcast_id)
    return render(request, "web/email/broadcasts/detail.html", _detail_context(request, broadcast))


@workspace_view(edit=True)
def broadcast_confirm(request: HttpRequest, broadcast_id: int) -> HttpResponse:
    """The confirm step: the counts again, then send now or schedule."""
    broadcast = _broadcast(request, broadcast_id)
    error = None
    if broadcast.status not in services.EDITABLE:
        messages.error(request, f"This broadcast is {broadcast.get_status_display().lower()}: nothing to confirm.")
        return redirect("web:email-broadcast", broadcast.pk)
    if request.method == "POST":
        try:
            if request.POST.get("action") == "send":
                services.broadcast_send_now(broadcast=broadcast, actor=_actor(request))
                messages.success(request, "Sending started.")
                return redirect("web:email-broadcast", broadcast.pk)
            if request.POST.get("action") == "schedule":
                field = forms.DateTimeField(input_formats=TIME_FORMATS)
                try:
                    at = field.clean(request.POST.get("at", ""))
                except forms.ValidationError:
                    raise ServiceError("give the date and time to send, e.g. 2026-03-02T09:00 (UTC)") from None
                services.broadcast_schedule(broadcast=broadcast, at=at, actor=_actor(request))
                messages.success(request, f"Scheduled for {at:%Y-%m-%d %H:%M} UTC.")
                return redirect("web:email-broadcast", broadcast.pk)
            error = "choose to send now or to schedule"
        except ServiceError as exc:
            error = str(exc)
    context = _detail_context(request, broadcast)
    context.update(error=error, at=(broadcast.scheduled_at or clock.now()).strftime("%Y-%m-%dT%H:%M"))
    return render(request, "web/email/broadcasts/confirm.html", context)


ACTIONS = {
    "pause": (services.broadcast_pause, "Paused: nothing more is sent until you resume."),
    "resume": (services.broadcast_resume, "Resumed."),
    "cancel": (services.broadcast_cancel, "Cancelled: messages not sent yet will not be sent."),
}


@workspace_view(edit=True)
@require_POST
def broadcast_action(request: HttpRequest, broadcast_id: int, action: str) -> HttpResponse:
    broadcast = _broadcast(request, broadcast_id)
    try:
        if action == "winner":
            label = request.POST.get("label") or None
            broadcast = services.broadcast_pick_winner(broadcast=broadcast, actor=_actor(request), label=label)
            messages.success(request, f"Variant {broadcast.winner.label} goes to the rest of the audience.")
        elif action in ACTIONS:
            service, done = ACTIONS[action]
            service(broadcast=broadcast, actor=_actor(request))
            messages.success(request, done)
        else:
            raise Http404("no such action")
    except ServiceError as exc:
        messages.error(request, str(exc))
    return redirect("web:email-broadcast", broadcast.pk)
