"""Public email endpoints: the open pixel, the click redirect, and inbound bounces and provider
webhooks. Thin: read the request, call `links` / `bounces` / `webhooks_in`, answer.

The pixel and the redirect need no login (the signed token is the authority); the hooks take a
workspace **hook key** (`lfh_…`) as the HTTP Basic user or password, or as `?key=`. Write keys
are public (every page's tracking snippet holds one), so they are refused here: with one, anyone
could forge bounces and complaints that suppress addresses and withdraw marketing consent.
"""

from __future__ import annotations

import base64
import binascii
import logging

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.csrf import csrf_exempt

from leadflow.core.models import KeyKind
from leadflow.core.services import ServiceError, api_key_authenticate, api_key_kind_claimed
from leadflow.messaging import bounces, links, webhooks_in
from leadflow.messaging.tokens import BadToken

log = logging.getLogger(__name__)

# The smallest transparent GIF (1×1).
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
            "Pragma": "no-cache", "Expires": "0"}
BAD_LINK_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Link not valid</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex"></head>
<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem">
<h1>This link is not valid</h1><p>The link may have been changed or cut short when it was copied.
Open it again from the original email.</p></body></html>"""


def _visit(request: HttpRequest) -> links.Visit:
    ip = request.META.get("REMOTE_ADDR") or None
    if getattr(settings, "LEADFLOW_TRUST_X_FORWARDED_FOR", False):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        ip = forwarded or ip
    return links.Visit(user_agent=request.META.get("HTTP_USER_AGENT", "")[:500], ip=ip, method=request.method)


def _pixel(status: int = 200) -> HttpResponse:
    response = HttpResponse(PIXEL, content_type="image/gif", status=status)
    for name, value in NO_CACHE.items():
        response[name] = value
    return response


def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    """`GET /e/o/TOKEN`: the 1×1 GIF; records an open (flagged when a proxy or scanner fetched it).
    An altered token still gets the image (so no broken-image icon shows) but with status 400
    and nothing recorded."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    try:
        with transaction.atomic():
            event = links.open_record(token=token, visit=_visit(request))
    except BadToken:
        return _pixel(400)
    except DatabaseError:
        log.exception("could not record an open")
        return _pixel()
    return _pixel(200 if event is not None else 404)


def click_redirect(request: HttpRequest, token: str) -> HttpResponse:
    """`GET /e/c/TOKEN`: 302 to the signed destination, recording the click. An altered token is
    a 400 page: never a redirect to a URL this site did not sign."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    try:
        destination = links.click_destination(token)[1]
    except BadToken:
        response = HttpResponse(BAD_LINK_PAGE, status=400, content_type="text/html; charset=utf-8")
        response["Cache-Control"] = "no-store"
        return response
    try:
        with transaction.atomic():
            links.click_record(token=token, visit=_visit(request))
    except DatabaseError:
        log.exception("could not record a click; redirecting anyway")
    response = HttpResponseRedirect(destination)
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


# --- hooks ----------------------------------------------------------------------------------------

def _json(status: int, body: dict) -> HttpResponse:
    return HttpResponse(orjson.dumps(body), status=status, content_type="application/json")


def _key_from(request: HttpRequest) -> str:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return user or password
    return request.GET.get("key", "")


HOOK_KEY_HOW = ("create a hook key (Settings → Email hooks, or `leadflow keys create --kind hook`) and use it "
                "in the webhook URL (?key=lfh_…) or as the HTTP Basic user")
WRONG_KIND = {
    KeyKind.WRITE: "write keys are public (they are in your site's tracking snippet) and cannot "
                   "authenticate email hooks: " + HOOK_KEY_HOW,
    KeyKind.SECRET: "secret keys are for the management API and cannot authenticate email hooks "
                    "(a hook URL ends up in provider consoles and server logs): " + HOOK_KEY_HOW,
}


def _authenticated_workspace(request: HttpRequest) -> tuple[int | None, str]:
    """The workspace of the hook key the request carries, or None and why not."""
    raw = _key_from(request)
    if not raw:
        return None, "missing hook key: " + HOOK_KEY_HOW
    claimed = api_key_kind_claimed(raw=raw)
    if claimed in WRONG_KIND:
        # Refused by its prefix alone, without looking it up: the answer says nothing about
        # whether such a key exists.
        return None, WRONG_KIND[claimed]
    key = api_key_authenticate(raw=raw, kind=KeyKind.HOOK)
    if key is None:
        return None, "invalid or revoked hook key: " + HOOK_KEY_HOW
    return key.workspace_id, ""


def _hook(request: HttpRequest, handle) -> HttpResponse:
    if request.method != "POST":
        return _json(405, {"detail": "use POST"})
    try:
        workspace_id, refusal = _authenticated_workspace(request)
    except DatabaseError:
        log.exception("hook key look-up failed")
        return _json(503, {"detail": "database busy or unavailable; retry"})
    if workspace_id is None:
        response = _json(401, {"detail": refusal})
        response["WWW-Authenticate"] = 'Basic realm="leadflow email hooks"'
        return response
    try:
        body = request.body  # Django refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE
    except RequestDataTooBig:
        return _json(413, {"detail": f"request body is over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}-byte limit"})
    try:
        with transaction.atomic():
            return _json(200, handle(workspace_id, body))
    except ServiceError as exc:
        return _json(400, {"detail": str(exc)})
    except DatabaseError:
        log.exception("could not apply an inbound email notification")
        return _json(503, {"detail": "database busy or unavailable; retry"})


def _json_body(body: bytes) -> dict:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ServiceError(f"malformed JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServiceError("the body must be a JSON object")
    return data


@csrf_exempt
def inbound_mime(request: HttpRequest) -> HttpResponse:
    """`POST /hooks/email/inbound`: one raw RFC 5322 message (a DSN, an ARF complaint, a mailto
    unsubscribe), e.g. piped from the MTA that receives the bounce domain."""
    return _hook(request, lambda workspace_id, body: bounces.bounce_process(workspace_id=workspace_id,
                                                                              raw=body).as_dict())


@csrf_exempt
def ses_hook(request: HttpRequest) -> HttpResponse:
    """`POST /hooks/email/ses`: Amazon SES notifications through an SNS HTTP(S) subscription."""
    return _hook(request, lambda workspace_id, body: webhooks_in.ses_hook_process(
        workspace_id=workspace_id, body=_json_body(body)).as_dict())


@csrf_exempt
def postmark_hook(request: HttpRequest) -> HttpResponse:
    """`POST /hooks/email/postmark`: Postmark Bounce, SpamComplaint and Delivery webhooks."""
    return _hook(request, lambda workspace_id, body: webhooks_in.postmark_hook_process(
        workspace_id=workspace_id, body=_json_body(body)).as_dict())
