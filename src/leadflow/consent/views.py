"""The public consent pages, reached from links in emails, without login.

- `u/TOKEN`: a POST with `List-Unsubscribe=One-Click` (RFC 8058, sent by mail clients without
  cookies) unsubscribes at once and answers 200; a GET only shows a confirmation button and the
  preference centre, because link scanners fetch every link and must never unsubscribe anyone.
- `p/TOKEN`: the preference centre: each topic and its state, pause for N weeks, unsubscribe from
  everything (every change a ConsentRecord with source `preference_centre`).
- `c/TOKEN`: double opt-in confirmation: a GET shows a button, the POST records the consent (a
  scanner's GET confirms nothing).

A test send (`MessageKind.TEST`) goes to a tester, not to the person it was personalised for: its
unsubscribe link (GET, POST and one-click POST alike) only says so and changes nothing, and its
preferences link (`p/TOKEN` naming the message) shows the preference centre of the contact the test
was personalised for, or of a person with no choices yet, read-only.

The signed token is the only credential, so CSRF protection (which guards sessions, and there
are none here) is off: these pages also work in mail apps that keep no cookies. An altered or
foreign token answers 400, a valid one for something gone 404, both with a plain page.
"""

from __future__ import annotations

import ipaddress

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from leadflow.consent import selectors, services
from leadflow.consent.models import ALL_MARKETING
from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.messaging.tokens import BadToken, token_make, token_read

PAUSE_CHOICES = (1, 2, 4, 8, 12)


def _ip(request: HttpRequest) -> str | None:
    from django.conf import settings

    raw = request.META.get("REMOTE_ADDR") or ""
    if getattr(settings, "LEADFLOW_TRUST_X_FORWARDED_FOR", False) and request.META.get("HTTP_X_FORWARDED_FOR"):
        raw = request.META["HTTP_X_FORWARDED_FOR"].split(",")[0].strip()
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _ua(request: HttpRequest) -> str:
    return request.META.get("HTTP_USER_AGENT", "")[:500]


def _problem(request: HttpRequest, status: int, title: str, text: str) -> HttpResponse:
    return render(request, "consent/problem.html", {"title": title, "text": text}, status=status)


def _bad_link(request: HttpRequest, reason: str = "") -> HttpResponse:
    return _problem(request, 400, "This link does not work",
                    (reason or "this link is not valid").capitalize() + ". Use the link from the most recent "
                    "email you received from us, copied in full.")


def _gone(request: HttpRequest) -> HttpResponse:
    return _problem(request, 404, "Nothing to change here",
                    "We have no record this link could change. If you still receive email you did not ask for, "
                    "reply to it and ask to be removed.")


def _sender(workspace_id: int) -> dict:
    name, postal_address = services.sender_get(workspace_id=workspace_id)
    return {"sender_name": name, "postal_address": postal_address}


def _preferences_path(workspace_id: int, contact_id: int) -> str:
    return reverse("consent-preferences", args=[token_make("preferences", {"w": workspace_id, "c": contact_id})])


def _preferences_context(contact) -> dict:
    return {"subs": selectors.subscriptions_get(contact=contact), "pause_choices": PAUSE_CHOICES,
            "preferences_action": _preferences_path(contact.workspace_id, contact.pk)}


def _test_contact(message):
    """The contact a test send was personalised for, if it still exists; else an unsaved person
    with nothing recorded (what the sample person would see)."""
    from leadflow.contacts.models import Contact
    from leadflow.contacts.selectors import contact_get
    from leadflow.messaging.rendering import TEST_CONTACT_KEY

    context = message.context if isinstance(message.context, dict) else {}
    contact_id = context.get(TEST_CONTACT_KEY)
    contact = None
    if isinstance(contact_id, int):
        contact = contact_get(workspace=message.workspace_id, contact_id=contact_id)  # follows merges
    return contact or Contact(workspace_id=message.workspace_id, email="", country="")


def _test_page(request: HttpRequest, message, *, preferences: bool) -> HttpResponse:
    """A test send's unsubscribe or preferences page: it explains, and nothing on it acts."""
    from leadflow.consent.links import test_preferences_url

    contact = _test_contact(message)
    return render(request, "consent/test_send.html", {
        "message": message, "topic_label": _topic_label(message), "preview_contact": contact,
        "show_preferences": preferences, "preferences_link": test_preferences_url(message),
        "subs": selectors.subscriptions_get(contact=contact) if preferences else None,
        "pause_choices": PAUSE_CHOICES, **_sender(message.workspace_id)})


def _test_message(payload: dict):
    from leadflow.messaging.models import Message, MessageKind

    return Message.objects.filter(pk=payload.get("m"), workspace_id=payload.get("w"), kind=MessageKind.TEST).first()


def _topic_label(message) -> str:
    slug = (message.topic or "").strip()
    if not slug or slug == ALL_MARKETING:
        return ""
    topic = selectors.topic_get_by_slug(workspace_id=message.workspace_id, slug=slug)
    return topic.name if topic is not None else slug


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    from leadflow.messaging.models import Message, MessageKind

    try:
        payload = token_read("unsubscribe", token)
    except BadToken as exc:
        return _bad_link(request, str(exc))
    message = (Message.objects.select_related("contact")
               .filter(pk=payload.get("m"), workspace_id=payload.get("w")).first())
    if message is None:
        return _gone(request)
    if message.kind == MessageKind.TEST:
        # A test went to a tester: unsubscribing them, or the person it was personalised for, would
        # be wrong. Every method answers 200 (what RFC 8058 one-click senders expect), nothing changes.
        return _test_page(request, message, preferences=False)
    context = {"message": message, "topic_label": _topic_label(message), "token": token,
               **_sender(message.workspace_id)}
    if request.method == "POST":
        if request.POST.get("List-Unsubscribe") != "One-Click":
            return _problem(request, 400, "Nothing was changed",
                            "An unsubscribe request must carry List-Unsubscribe=One-Click.")
        source = "unsubscribe_page" if request.POST.get("via") == "page" else "one_click"
        services.unsubscribe_from_message(message=message, source=source, ip=_ip(request), user_agent=_ua(request))
        if message.contact is not None:
            context.update(_preferences_context(message.contact))
        return render(request, "consent/unsubscribed.html", context)
    if message.contact is not None:
        context.update(_preferences_context(message.contact))
    return render(request, "consent/unsubscribe.html", context)


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    from leadflow.contacts.selectors import contact_get

    try:
        payload = token_read("preferences", token)
    except BadToken as exc:
        return _bad_link(request, str(exc))
    if isinstance(payload.get("w"), int) and isinstance(payload.get("m"), int) and "c" not in payload:
        message = _test_message(payload)
        return _gone(request) if message is None else _test_page(request, message, preferences=True)
    if not isinstance(payload.get("w"), int) or not isinstance(payload.get("c"), int):
        return _bad_link(request)
    contact = contact_get(workspace=payload["w"], contact_id=payload["c"])
    if contact is None:
        return _gone(request)
    notice, error, status = "", "", 200
    if request.method == "POST":
        action = request.POST.get("action", "save")
        ip, ua = _ip(request), _ua(request)
        try:
            if action == "save":
                done = services.preferences_save(contact=contact, topics=set(request.POST.getlist("topics")),
                                                 ip=ip, user_agent=ua)
                notice = "Your choices are saved."
                if done.pending:
                    notice += " We sent you an email: follow its link to confirm the new subscription."
            elif action == "pause":
                weeks = request.POST.get("weeks", "")
                services.marketing_pause(contact=contact, weeks=int(weeks) if weeks.isdigit() else -1)
                notice = f"Paused: no marketing email for {weeks} week{'s' if weeks != '1' else ''}."
            elif action == "resume":
                services.marketing_resume(contact=contact)
                notice = "Your emails are no longer paused."
            elif action == "unsubscribe_all":
                services.unsubscribe_all(contact=contact, source=services.PREFERENCE_CENTRE, ip=ip, user_agent=ua,
                                         wording="unsubscribe from everything (preference centre)")
                notice = "You are unsubscribed from all marketing email."
            elif action == "resubscribe":
                services.marketing_resubscribe(contact=contact, ip=ip, user_agent=ua)
                notice = "You are subscribed to marketing email again."
            else:
                error, status = "Unknown action: nothing was changed.", 400
        except ServiceError as exc:
            error, status = str(exc), 400
    context = {"contact": contact, "notice": notice, "error": error, **_sender(contact.workspace_id),
               **_preferences_context(contact)}
    return render(request, "consent/preferences.html", context, status=status)


@csrf_exempt
@require_http_methods(["GET", "HEAD", "POST"])
def optin(request: HttpRequest, token: str) -> HttpResponse:
    try:
        optin_request = services.optin_lookup(token=token)
    except services.NotFound:
        return _gone(request)
    except ServiceError as exc:
        return _bad_link(request, str(exc))
    topic = selectors.topic_get_by_slug(workspace_id=optin_request.workspace_id, slug=optin_request.topic)
    context = {"optin": optin_request, "topic_name": topic.name if topic else optin_request.topic,
               "expired": (optin_request.confirmed_at is None
                           and optin_request.requested_at < clock.now() - selectors.OPTIN_VALID_FOR),
               **_sender(optin_request.workspace_id)}
    if request.method == "POST":
        try:
            services.optin_confirm(token=token, ip=_ip(request), user_agent=_ua(request))
        except ServiceError as exc:
            return _problem(request, 400, "We could not confirm", str(exc).capitalize() + ".")
        context["confirmed"] = True
        context["preferences_action"] = _preferences_path(optin_request.workspace_id, optin_request.contact_id)
        return render(request, "consent/optin.html", context)
    context["confirmed"] = optin_request.confirmed_at is not None
    return render(request, "consent/optin.html", context, status=410 if context["expired"] else 200)
