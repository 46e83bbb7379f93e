"""Hook keys (`lfh_…`): the only credential the inbound email hooks accept, and good for nothing
else. Write keys are public (every page's tracking snippet holds one), so with them anyone could
forge bounces and spam complaints that suppress addresses and withdraw marketing consent."""

from __future__ import annotations

import base64
import html
import io
import re

import orjson
import pytest
from conftest import post_batch
from django.core.management import call_command
from django.test import override_settings

from leadflow.consent.models import ConsentRecord, Suppression
from leadflow.core.models import ApiKey, KeyKind
from leadflow.core.services import (
    ServiceError, api_key_authenticate, api_key_create, api_key_kind_claimed, api_key_revoke, user_create,
)
from leadflow.messaging.models import Message, MessageEvent, MessageEventKind, MessageStatus
from leadflow.messaging.tokens import verp_local
from leadflow.tracking.models import Event

from test_bounces import ARF_COMPLAINT, GMAIL_NO_SUCH_ACCOUNT, fill, verp
from test_email_tracking import make_contact, sent_message

pytestmark = pytest.mark.django_db

WRITE_REFUSAL = ("write keys are public (they are in your site's tracking snippet) and cannot "
                 "authenticate email hooks")
HOOKS = ("inbound", "ses", "postmark")


def basic(key: str, *, as_password: bool = False) -> str:
    pair = f":{key}" if as_password else f"{key}:"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def hook_key(keys) -> str:
    return api_key_create(workspace=keys.workspace, kind=KeyKind.HOOK, name="email hooks")[1]


def complaint_body(hook: str, message: Message) -> tuple[bytes, str]:
    """A spam complaint about `message` as each hook receives it (the worst forgery: it
    suppresses the address and withdraws every marketing consent)."""
    if hook == "inbound":
        return fill(ARF_COMPLAINT, message=message, to="fbl@acme.example"), "message/rfc822"
    if hook == "ses":
        notification = {"notificationType": "Complaint",
                        "mail": {"source": verp(message), "messageId": f"ses-{message.pk}",
                                 "destination": [message.to_email],
                                 "commonHeaders": {"messageId": message.header_message_id}},
                        "complaint": {"feedbackId": f"fb-{message.pk}", "complaintFeedbackType": "abuse",
                                      "complainedRecipients": [{"emailAddress": message.to_email}]}}
        body = {"Type": "Notification", "MessageId": f"sns-{message.pk}",
                "Message": orjson.dumps(notification).decode()}
        return orjson.dumps(body), "text/plain; charset=UTF-8"
    body = {"RecordType": "SpamComplaint", "ID": message.pk, "Type": "SpamComplaint", "TypeCode": 512,
            "Email": message.to_email, "MessageID": f"pm-{message.pk}",
            "Metadata": {"lf_message": verp_local(message.pk)}}
    return orjson.dumps(body), "application/json"


def post_hook(client, hook: str, body: bytes, content_type: str, *, key: str, how: str = "basic"):
    url = f"/hooks/email/{hook}"
    if how == "query":
        return client.post(f"{url}?key={key}", body, content_type=content_type)
    return client.post(url, body, content_type=content_type,
                       HTTP_AUTHORIZATION=basic(key, as_password=how == "password"))


def nothing_happened(message: Message) -> None:
    assert not Suppression.objects.exists()
    assert not ConsentRecord.objects.exists()
    assert not MessageEvent.objects.exclude(kind=MessageEventKind.QUEUED).exists()
    assert not Event.objects.filter(event="Email Marked as Spam").exists()
    message.refresh_from_db()
    assert message.status == MessageStatus.SENT and message.complained_at is None


# --- the hooks take hook keys only ---------------------------------------------------------------------------

@pytest.mark.parametrize("hook", HOOKS)
def test_write_and_secret_keys_are_refused_on_every_hook_with_a_clear_message(client, ws, hook, frozen_clock):
    message = sent_message(ws, make_contact(ws, "ada@example.com"))
    body, content_type = complaint_body(hook, message)
    for how in ("basic", "password", "query"):
        response = post_hook(client, hook, body, content_type, key=ws.write_key, how=how)
        assert response.status_code == 401, (how, response.content)
        detail = response.json()["detail"]
        assert detail.startswith(WRITE_REFUSAL)
        assert "leadflow keys create --kind hook" in detail and "Settings" in detail
        assert response["WWW-Authenticate"].startswith("Basic")

        response = post_hook(client, hook, body, content_type, key=ws.secret_key, how=how)
        assert response.status_code == 401
        assert response.json()["detail"].startswith("secret keys are for the management API and cannot "
                                                    "authenticate email hooks")
        assert "--kind hook" in response.json()["detail"]
    nothing_happened(message)

    # The same complaint with the workspace's hook key is applied: the refusals above were about
    # the key, not the body.
    response = post_hook(client, hook, body, content_type, key=hook_key(ws))
    assert response.status_code == 200, response.content
    assert [(o["outcome"], o["message_id"]) for o in response.json()["outcomes"]] == [("complaint", message.pk)]
    assert Suppression.objects.get(email="ada@example.com").reason == "complaint"
    assert ConsentRecord.objects.get(contact=message.contact).status == "withdrawn"


@pytest.mark.parametrize("how", ["basic", "password", "query"])
def test_a_hook_key_works_as_basic_user_password_or_query(client, ws, how, frozen_clock):
    message = sent_message(ws, make_contact(ws, "bo@example.com"))
    body, content_type = complaint_body("postmark", message)
    response = post_hook(client, "postmark", body, content_type, key=hook_key(ws), how=how)
    assert response.status_code == 200 and response.json()["outcomes"][0]["message_id"] == message.pk


def test_missing_unknown_and_revoked_hook_keys_are_refused(client, ws, frozen_clock):
    message = sent_message(ws, make_contact(ws, "cy@example.com"))
    body, content_type = complaint_body("inbound", message)
    missing = client.post("/hooks/email/inbound", body, content_type=content_type)
    assert missing.status_code == 401 and missing.json()["detail"].startswith("missing hook key")
    raw = hook_key(ws)
    for wrong in ("lfh_not-a-key", raw + "x", "some-other-token"):
        refused = post_hook(client, "inbound", body, content_type, key=wrong)
        assert refused.status_code == 401 and refused.json()["detail"].startswith("invalid or revoked hook key")
    api_key_revoke(key=api_key_authenticate(raw=raw, kind=KeyKind.HOOK))
    revoked = post_hook(client, "inbound", body, content_type, key=raw)
    assert revoked.status_code == 401 and revoked.json()["detail"].startswith("invalid or revoked hook key")
    nothing_happened(message)


def test_the_address_fallback_needs_this_workspaces_hook_key(client, ws, other_ws, frozen_clock):
    """A DSN naming neither a VERP address nor a Message-ID of ours falls back on the failed
    address's latest message: reachable with this workspace's (secret) hook key only."""
    message = sent_message(ws, make_contact(ws, "dee@example.com"))
    raw = fill(GMAIL_NO_SUCH_ACCOUNT, to="news@acme.example", sender="news@acme.example",
               rcpt="dee@example.com", mid="<unknown@elsewhere>")
    for key in (ws.write_key, ws.secret_key):
        assert post_hook(client, "inbound", raw, "message/rfc822", key=key).status_code == 401
    foreign = post_hook(client, "inbound", raw, "message/rfc822", key=hook_key(other_ws))
    assert foreign.status_code == 200
    assert [o["message_id"] for o in foreign.json()["outcomes"]] == [None]
    nothing_happened(message)
    ours = post_hook(client, "inbound", raw, "message/rfc822", key=hook_key(ws))
    assert [(o["outcome"], o["message_id"]) for o in ours.json()["outcomes"]] == [("hard", message.pk)]


@pytest.mark.parametrize("hook", HOOKS)
def test_another_workspaces_hook_key_cannot_touch_this_workspaces_messages(client, ws, other_ws, hook,
                                                                           frozen_clock):
    message = sent_message(ws, make_contact(ws, "eve@example.com"))
    # The other workspace has a message to the same address: its own, which the key may touch.
    theirs = sent_message(other_ws, make_contact(other_ws, "eve@example.com"))
    body, content_type = complaint_body(hook, message)  # names *our* message (VERP, Message-ID, metadata)
    response = post_hook(client, hook, body, content_type, key=hook_key(other_ws))
    assert response.status_code == 200, response.content
    # The key works, on its own workspace's message to that address (the fallback), never on ours.
    assert [o["message_id"] for o in response.json()["outcomes"]] == [theirs.pk]
    assert Suppression.objects.filter(workspace_id=other_ws.workspace.pk, email="eve@example.com").exists()
    assert not Suppression.objects.filter(workspace_id=ws.workspace.pk).exists()
    assert not ConsentRecord.objects.filter(workspace_id=ws.workspace.pk).exists()
    assert not MessageEvent.objects.filter(message=message).exclude(kind=MessageEventKind.QUEUED).exists()
    message.refresh_from_db()
    assert message.complained_at is None


# --- hook keys are good for nothing else ---------------------------------------------------------------------

def test_a_hook_key_cannot_ingest_events(client, ws):
    raw = hook_key(ws)
    batch = [{"type": "identify", "userId": "u-1", "traits": {"email": "x@example.com"}}]
    for response in (post_batch(client, ws, batch, auth=basic(raw)),
                     post_batch(client, None, [], body={"batch": batch, "writeKey": raw}),
                     post_batch(client, None, [], path="/v1/track",
                                body={"event": "Signed Up", "userId": "u-1", "writeKey": raw})):
        assert response.status_code == 401, response.content
        assert "invalid or revoked write key" in response.json()["error"]
    assert not Event.objects.exists()
    assert post_batch(client, ws, batch).status_code == 200  # the write key still does


def test_a_hook_key_cannot_use_the_management_api(client, ws):
    raw = hook_key(ws)
    make_contact(ws, "fay@example.com")
    for method, path in (("get", "/api/contacts"), ("get", "/api/workspace"),
                         ("get", "/api/email/consent/suppressions")):
        response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {raw}")
        assert response.status_code == 401, path
    response = client.post("/api/email/consent/suppressions", orjson.dumps({"email": "fay@example.com"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 401 and not Suppression.objects.exists()
    assert client.get("/api/contacts", HTTP_AUTHORIZATION=ws.bearer).status_code == 200


def test_keys_authenticate_only_as_their_own_kind(ws):
    hook = hook_key(ws)
    assert hook.startswith("lfh_") and api_key_kind_claimed(raw=hook) == "hook"
    assert api_key_authenticate(raw=hook, kind=KeyKind.HOOK).workspace == ws.workspace
    assert api_key_authenticate(raw=hook, kind=KeyKind.WRITE) is None
    assert api_key_authenticate(raw=hook, kind=KeyKind.SECRET) is None
    assert api_key_authenticate(raw=ws.write_key, kind=KeyKind.HOOK) is None
    assert api_key_authenticate(raw=ws.secret_key, kind=KeyKind.HOOK) is None
    with pytest.raises(ValueError):
        api_key_authenticate(raw=hook, kind="admin")
    with pytest.raises(ServiceError, match="'write', 'secret', 'hook'"):
        api_key_create(workspace=ws.workspace, kind="root")


# --- creating hook keys --------------------------------------------------------------------------------------

def test_the_keys_command_creates_a_hook_key_that_opens_the_hooks(client, ws, frozen_clock):
    out = io.StringIO()
    call_command("keys", "create", "--kind", "hook", "--workspace", ws.workspace.slug, "--name", "ses", stdout=out)
    raw = out.getvalue().strip()
    assert re.fullmatch(r"lfh_[A-Za-z0-9_-]{20,}", raw)
    key = ApiKey.objects.get(workspace=ws.workspace, kind="hook")
    assert key.name == "ses" and raw.startswith(key.prefix)
    listing = io.StringIO()
    call_command("keys", "list", "--workspace", ws.workspace.slug, stdout=listing)
    assert re.search(rf"{re.escape(key.prefix)}…\s+hook\s+active", listing.getvalue())
    message = sent_message(ws, make_contact(ws, "gus@example.com"))
    body, content_type = complaint_body("ses", message)
    assert post_hook(client, "ses", body, content_type, key=raw, how="query").status_code == 200


@pytest.fixture
def ui(client, ws):
    client.force_login(user_create(username="marketer", password="pw-123456789", workspace=ws.workspace,
                                   role="marketer"))
    return client


def test_the_settings_page_shows_the_hook_urls_and_creates_a_hook_key(ui, ws, frozen_clock):
    plain = html.unescape(ui.get("/settings/").content.decode())
    for hook in HOOKS:
        assert f"http://testserver/hooks/email/{hook}?key=YOUR_HOOK_KEY" in plain
    with override_settings(PUBLIC_URL="https://lf.acme.example"):
        plain = html.unescape(ui.get("/settings/").content.decode())
    assert "https://lf.acme.example/hooks/email/ses?key=YOUR_HOOK_KEY" in plain

    response = ui.post("/settings/", {"action": "hook-key"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    page = html.unescape(response.content.decode())
    raw = re.search(r'id="raw-key"[^>]*>(lfh_[\w-]+)<', page).group(1)
    urls = re.findall(r"http://testserver/hooks/email/\w+\?key=lfh_[\w-]+", page)
    assert urls == [f"http://testserver/hooks/email/{hook}?key={raw}" for hook in HOOKS]
    assert api_key_authenticate(raw=raw, kind=KeyKind.HOOK).workspace == ws.workspace
    assert 'data-write-key="YOUR_WRITE_KEY"' in page  # a hook key never goes into the tracking snippet
    assert raw not in ui.get("/settings/").content.decode()  # shown once

    # The URL as shown works as pasted.
    message = sent_message(ws, make_contact(ws, "hal@example.com"))
    body, content_type = complaint_body("postmark", message)
    response = ui.post(urls[2].removeprefix("http://testserver"), body, content_type=content_type)
    assert response.status_code == 200 and response.json()["outcomes"][0]["message_id"] == message.pk

    # The general form creates one too.
    response = ui.post("/settings/", {"action": "create", "kind": "hook", "name": "Postfix"})
    raw2 = re.search(r'id="raw-key"[^>]*>(lfh_[\w-]+)<', response.content.decode()).group(1)
    assert api_key_authenticate(raw=raw2, kind=KeyKind.HOOK).name == "Postfix"


def test_only_editors_create_hook_keys(client, ws):
    client.force_login(user_create(username="analyst", password="pw-123456789", workspace=ws.workspace,
                                   role="analyst"))
    assert client.post("/settings/", {"action": "hook-key"}).status_code == 403
    assert not ApiKey.objects.filter(kind="hook").exists()
    page = client.get("/settings/").content.decode()
    assert "YOUR_HOOK_KEY" in page and 'value="hook-key"' not in page
