"""The marketer-facing pages. Thin: parse the request, call a selector or service, render.

Every page works inside the current workspace (web.context.current_workspace); anything looked
up by id is looked up within it, so another workspace's ids answer 404.
"""

from __future__ import annotations

from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from leadflow.consent.models import ConsentRecord
from leadflow.contacts import selectors as contact_selectors
from leadflow.contacts.models import ContactMerge
from leadflow.core.models import ApiKey, Role
from leadflow.core.selectors import user_role, workspaces_for_user
from leadflow.core.services import ServiceError, api_key_create, api_key_revoke
from leadflow.tracking import forms as form_service
from leadflow.tracking import selectors as tracking_selectors
from leadflow.tracking.models import Event
from leadflow.tracking.public_views import embed_snippet, hosted_url
from leadflow.tracking.sources import CHANNEL_LABELS
from leadflow.web import forms as web_forms
from leadflow.web import selectors
from leadflow.web.context import current_workspace

CONTACTS_PER_PAGE = 50
EVENTS_PER_PAGE = 50
COMPANIES_PER_PAGE = 100
REJECTED_SHOWN = 100
EDITOR_ROLES = {Role.ADMIN, Role.MARKETER}
TOUCH_FIELDS = (("utm_source", "UTM source"), ("utm_medium", "UTM medium"),
                ("utm_campaign", "UTM campaign"), ("utm_term", "UTM term"), ("utm_content", "UTM content"),
                ("referrer", "Referrer"), ("landing_page", "Landing page"), ("form", "Form"),
                ("import", "Import"), ("at", "At"))


def workspace_view(*, edit: bool = False):
    """Login required, a current workspace required; `edit` also requires an editor role.

    The view is called with `request.workspace` and `request.role` set.
    """
    def decorator(view):
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            workspace = current_workspace(request)
            if workspace is None:
                return render(request, "web/no_workspace.html", status=403)
            request.workspace = workspace
            request.role = user_role(user=request.user, workspace=workspace)
            request.can_edit = request.role in EDITOR_ROLES
            if edit and not request.can_edit:
                return _forbidden(request)
            return view(request, *args, **kwargs)
        return wrapper
    return decorator


def _forbidden(request: HttpRequest) -> HttpResponse:
    return render(request, "web/forbidden.html", {"role": request.role}, status=403)


def _page(request: HttpRequest, items, per_page: int):
    return Paginator(items, per_page).get_page(request.GET.get("page"))


def _base_url(request: HttpRequest) -> str:
    return settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")


def _actor(request: HttpRequest) -> str:
    return f"user:{request.user.pk}"


def channel_label(channel: str) -> str:
    return CHANNEL_LABELS.get(channel, channel or "Unknown")


@login_required
def home(request: HttpRequest) -> HttpResponse:
    return redirect("web:contacts")


@login_required
@require_POST
def workspace_switch(request: HttpRequest) -> HttpResponse:
    wanted = request.POST.get("workspace_id", "")
    allowed = {w.pk for w in workspaces_for_user(user=request.user)}
    if not wanted.isdigit() or int(wanted) not in allowed:
        raise Http404("no such workspace")
    request.session["workspace_id"] = int(wanted)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("web:contacts")
    return redirect(target)


# Contacts ------------------------------------------------------------------------------------

@workspace_view()
def contacts_list(request: HttpRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()
    contacts = contact_selectors.contact_search(workspace=request.workspace, q=q).order_by("-id")
    page = _page(request, contacts, CONTACTS_PER_PAGE)
    return render(request, "web/contacts_list.html", {"section": "contacts", "page": page, "q": q})


def _touch_rows(touch: dict) -> list[tuple[str, str]]:
    rows = []
    for key, label in TOUCH_FIELDS:
        value = str(touch.get(key) or "")
        if key == "at" and (at := parse_datetime(value)) is not None:
            value = at.strftime("%Y-%m-%d %H:%M UTC")
        if value:
            rows.append((label, value))
    return rows


# Email events (messaging.events) show what a reader needs, not every id they carry.
EMAIL_EVENT_PROPERTIES = ("template", "campaign", "status", "diagnostic", "machine_reason", "topic")


def _email_event_row(event: Event, props: dict) -> dict:
    shown = []
    if props.get("template"):
        version = props.get("template_version")
        shown.append(("template", f"{props['template']}{f' v{version}' if version else ''}"))
    for key in EMAIL_EVENT_PROPERTIES[1:]:
        value = props.get(key)
        if value not in ("", None) and not isinstance(value, (dict, list)):
            shown.append((key, str(value)[:120]))
    if props.get("machine"):
        shown.append(("machine", "yes: not scored, not in statistics"))
    if props.get("message_id"):
        shown.append(("message", f"#{props['message_id']}"))
    return {"event": event, "name": event.event, "properties": shown[:6], "page_url": props.get("url") or ""}


def _event_row(event: Event) -> dict:
    context = event.context if isinstance(event.context, dict) else {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    props = event.properties if isinstance(event.properties, dict) else {}
    leadflow_ctx = context.get("leadflow") if isinstance(context.get("leadflow"), dict) else {}
    if leadflow_ctx.get("system") == "email":
        return _email_event_row(event, props)
    shown: list[tuple[str, str]] = []
    if event.type == "identify":
        source = event.traits if isinstance(event.traits, dict) else {}
    else:
        source = props
    for key, value in source.items():
        if key in {"fields", "page_url", "url", "form_id", "magnet_id"}:
            continue
        if isinstance(value, dict) and key == "consent":
            value = f"{value.get('topic', '')}: {'granted' if value.get('granted') else 'not given'}"
        elif isinstance(value, (dict, list)) or value in ("", None):
            continue
        shown.append((key, str(value)[:120]))
        if len(shown) == 6:
            break
    return {"event": event, "name": event.event or props.get("name") or page.get("title") or "",
            "properties": shown, "page_url": page.get("url") or props.get("url") or props.get("page_url") or ""}


@workspace_view()
def contact_detail(request: HttpRequest, contact_id: int) -> HttpResponse:
    workspace = request.workspace
    contact = contact_selectors.contact_get(workspace=workspace, contact_id=contact_id)
    if contact is None:
        raise Http404("no such contact in this workspace")
    if contact.pk != contact_id:
        return redirect("web:contact", contact_id=contact.pk)
    events = (Event.objects.filter(workspace=workspace, contact=contact)
              .order_by("-timestamp", "-id"))
    page = _page(request, events, EVENTS_PER_PAGE)
    context = {
        "section": "contacts",
        "contact": contact,
        "identities": contact.identities.order_by("kind", "value"),
        "traits": sorted(contact.traits.items()) if isinstance(contact.traits, dict) else [],
        "first_touch": contact.first_touch or {},
        "first_touch_channel": channel_label(contact.first_touch.get("channel", "")) if contact.first_touch else "",
        "first_touch_rows": _touch_rows(contact.first_touch or {}),
        "latest_touch": contact.latest_touch or {},
        "latest_touch_channel": channel_label(contact.latest_touch.get("channel", "")) if contact.latest_touch else "",
        "latest_touch_rows": _touch_rows(contact.latest_touch or {}),
        "consents": ConsentRecord.objects.filter(workspace=workspace, contact=contact).order_by("-at", "-id"),
        "merges": ContactMerge.objects.filter(workspace=workspace, winner=contact).order_by("-at", "-id"),
        "page": page,
        "timeline": [_event_row(e) for e in page],
    }
    return render(request, "web/contact_detail.html", context)


@workspace_view()
def companies_list(request: HttpRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()
    companies = selectors.company_counts(contact_selectors.company_list(workspace=request.workspace, q=q))
    page = _page(request, companies, COMPANIES_PER_PAGE)
    return render(request, "web/companies_list.html", {"section": "companies", "page": page, "q": q})


# Forms ---------------------------------------------------------------------------------------

@workspace_view()
def forms_list(request: HttpRequest) -> HttpResponse:
    forms = list(selectors.form_list(workspace=request.workspace))
    counts = tracking_selectors.form_submission_counts(workspace=request.workspace, forms=forms)
    for form in forms:
        form.submission_count = counts[form.pk]
    return render(request, "web/forms_list.html", {"section": "forms", "forms": forms})


@workspace_view()
def form_detail(request: HttpRequest, form_id: int) -> HttpResponse:
    form = selectors.form_get(workspace=request.workspace, form_id=form_id)
    if form is None:
        raise Http404("no such form in this workspace")
    base, slug = _base_url(request), request.workspace.slug
    return render(request, "web/form_detail.html", {
        "section": "forms", "form": form,
        "hosted_url": hosted_url(base_url=base, workspace_slug=slug, form_slug=form.slug),
        "embed_snippet": embed_snippet(base_url=base, workspace_slug=slug, form_slug=form.slug),
        "submission_count": tracking_selectors.form_submission_counts(
            workspace=request.workspace, forms=[form])[form.pk],
    })


@workspace_view(edit=True)
@require_http_methods(["GET", "POST"])
def form_edit(request: HttpRequest, form_id: int | None = None) -> HttpResponse:
    workspace = request.workspace
    existing = None
    if form_id is not None:
        existing = selectors.form_get(workspace=workspace, form_id=form_id)
        if existing is None:
            raise Http404("no such form in this workspace")
    magnets = list(selectors.magnet_list(workspace=workspace))
    if request.method == "POST":
        settings_form = web_forms.FormSettingsForm(request.POST, magnets=magnets)
        fields = web_forms.FieldFormSet(request.POST, prefix="fields")
        if settings_form.is_valid() and fields.is_valid():
            data = settings_form.cleaned_data
            specs = [spec for row in fields for spec in [row.field_spec()] if spec]
            try:
                form = form_service.form_save(
                    workspace=workspace, slug=data["slug"], name=data["name"], fields=specs, form=existing,
                    submit_label=data["submit_label"], consent_text=data["consent_text"].strip(),
                    consent_required=data["consent_required"],
                    consent_topic=data["consent_topic"].strip() or "marketing",
                    lead_magnet=data["lead_magnet"] or None, success_message=data["success_message"],
                    redirect_url=data["redirect_url"])
            except ServiceError as exc:
                settings_form.add_error(None, str(exc))
            else:
                return redirect("web:form", form_id=form.pk)
    elif existing is not None:
        settings_form = web_forms.FormSettingsForm(magnets=magnets, initial={
            "name": existing.name, "slug": existing.slug, "submit_label": existing.submit_label,
            "consent_text": existing.consent_text, "consent_required": existing.consent_required,
            "consent_topic": existing.consent_topic, "success_message": existing.success_message,
            "redirect_url": existing.redirect_url,
            "lead_magnet": str(existing.lead_magnet_id or "")})
        fields = web_forms.FieldFormSet(prefix="fields",
                                        initial=web_forms.field_rows_initial(existing.fields))
    else:
        settings_form = web_forms.FormSettingsForm(magnets=magnets)
        fields = web_forms.FieldFormSet(prefix="fields",
                                        initial=web_forms.field_rows_initial(web_forms.DEFAULT_FIELDS))
    return render(request, "web/form_edit.html", {
        "section": "forms", "existing": existing, "settings_form": settings_form, "fields": fields})


# Lead magnets --------------------------------------------------------------------------------

@workspace_view()
def magnets_list(request: HttpRequest) -> HttpResponse:
    magnets = list(selectors.magnet_list(workspace=request.workspace))
    stats = tracking_selectors.magnet_counts(workspace=request.workspace, magnets=magnets)
    for magnet in magnets:
        magnet.downloads = stats[magnet.pk]["downloads"]
        magnet.submissions = stats[magnet.pk]["form_submissions"]
        magnet.delivery_emails = stats[magnet.pk]["delivery_emails"]
    return render(request, "web/magnets_list.html", {"section": "magnets", "magnets": magnets})


@workspace_view(edit=True)
@require_http_methods(["GET", "POST"])
def magnet_edit(request: HttpRequest, magnet_id: int | None = None) -> HttpResponse:
    existing = None
    if magnet_id is not None:
        existing = selectors.magnet_get(workspace=request.workspace, magnet_id=magnet_id)
        if existing is None:
            raise Http404("no such lead magnet in this workspace")
    templates = list(selectors.transactional_templates(workspace=request.workspace))
    if request.method == "POST":
        form = web_forms.MagnetForm(request.POST, templates=templates)
        if form.is_valid():
            data = form.cleaned_data
            try:
                form_service.magnet_save(workspace=request.workspace, slug=data["slug"], name=data["name"],
                                         kind=data["kind"], delivery_url=data["delivery_url"].strip(),
                                         description=data["description"], email_delivery=data["email_delivery"],
                                         delivery_template=data["delivery_template"] or None, magnet=existing)
            except ServiceError as exc:
                form.add_error(None, str(exc))
            else:
                return redirect("web:magnets")
    else:
        form = web_forms.MagnetForm(initial=web_forms.MagnetForm.initial_for(existing) if existing else None,
                                    templates=templates)
    return render(request, "web/magnet_edit.html", {"section": "magnets", "existing": existing, "form": form})


# Sources and import --------------------------------------------------------------------------

@workspace_view()
def sources(request: HttpRequest) -> HttpResponse:
    channels = selectors.contacts_per_channel(workspace=request.workspace)
    total = sum(row["n"] for row in channels)
    for row in channels:
        row["label"] = channel_label(row["source_channel"]) if row["source_channel"] else "Not known yet"
        row["share"] = round(100 * row["n"] / total) if total else 0
    return render(request, "web/sources.html", {
        "section": "sources", "channels": channels, "total": total,
        "combinations": selectors.top_utm_combinations(workspace=request.workspace),
    })


@workspace_view(edit=True)
@require_http_methods(["GET", "POST"])
def contacts_import_view(request: HttpRequest) -> HttpResponse:
    report = None
    if request.method == "POST":
        form = web_forms.ImportForm(request.POST, request.FILES)
        if form.is_valid():
            from leadflow.contacts.imports import ImportFileError, contacts_import

            try:
                report = contacts_import(workspace=request.workspace, file=form.cleaned_data["file"],
                                         source_label=form.cleaned_data["source_label"].strip(),
                                         actor=_actor(request))
            except (ImportFileError, ServiceError) as exc:
                form.add_error(None, str(exc))
    else:
        form = web_forms.ImportForm()
    return render(request, "web/import.html", {
        "section": "import", "form": form, "report": report,
        "rejected": list(report.rejected[:REJECTED_SHOWN]) if report else [],
        "rejected_shown": REJECTED_SHOWN,
    })


# Settings: API keys and the tracking snippet -------------------------------------------------

def tracking_snippet(*, base_url: str, write_key: str = "YOUR_WRITE_KEY") -> str:
    return f'<script src="{base_url}/t/lf.js" data-write-key="{write_key}" async></script>'


EMAIL_HOOKS = (("inbound", "Your MTA (raw bounces, complaints, mailto unsubscribes)"),
               ("ses", "Amazon SES (SNS HTTPS subscription)"),
               ("postmark", "Postmark (bounce, spam complaint and delivery webhooks)"))


def email_hook_urls(*, base_url: str, hook_key: str = "YOUR_HOOK_KEY") -> list[tuple[str, str]]:
    """The inbound email hook URLs to paste into SES, Postmark or the MTA, with the key in them."""
    return [(label, f"{base_url}{reverse(f'email-hook-{name}')}?key={hook_key}") for name, label in EMAIL_HOOKS]


@workspace_view()
@require_http_methods(["GET", "POST"])
def settings_page(request: HttpRequest) -> HttpResponse:
    new_key = raw_key = None
    key_form = web_forms.ApiKeyForm()
    if request.method == "POST":
        if not request.can_edit:
            return _forbidden(request)
        action = request.POST.get("action")
        if action == "revoke":
            key_id = request.POST.get("key_id", "")
            key = (ApiKey.objects.filter(workspace=request.workspace, pk=int(key_id)).first()
                   if key_id.isdigit() else None)
            if key is None:
                raise Http404("no such key in this workspace")
            api_key_revoke(key=key, actor=_actor(request))
            return redirect("web:settings")
        if action == "site-key":
            key_form = web_forms.ApiKeyForm({"kind": "write", "name": "website tracking"})
        elif action == "hook-key":
            key_form = web_forms.ApiKeyForm({"kind": "hook", "name": "email hooks"})
        else:
            key_form = web_forms.ApiKeyForm(request.POST)
        if key_form.is_valid():
            try:
                new_key, raw_key = api_key_create(workspace=request.workspace, kind=key_form.cleaned_data["kind"],
                                                  name=key_form.cleaned_data["name"].strip(),
                                                  actor=_actor(request))
            except ServiceError as exc:
                key_form.add_error(None, str(exc))
            else:
                key_form = web_forms.ApiKeyForm()
    base = _base_url(request)
    keys = ApiKey.objects.filter(workspace=request.workspace).order_by("revoked_at", "-created_at", "-id")
    response = render(request, "web/settings.html", {
        "section": "settings", "keys": keys, "key_form": key_form, "new_key": new_key, "raw_key": raw_key,
        "snippet": tracking_snippet(base_url=base, write_key=raw_key if new_key and new_key.kind == "write"
                                    else "YOUR_WRITE_KEY"),
        "hook_urls": email_hook_urls(base_url=base, hook_key=raw_key if new_key and new_key.kind == "hook"
                                     else "YOUR_HOOK_KEY"),
        "role": request.role,
    })
    if raw_key:
        response["Cache-Control"] = "no-store"
    return response
