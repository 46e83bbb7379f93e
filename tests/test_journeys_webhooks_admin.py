"""Managing journey webhook endpoints through the API, the web pages and `leadflow journeys
webhooks`: the signing secret is shown when it is made (create, rotate) and never again, health
per endpoint, disable/enable, an endpoint's deliveries (paginated, by status, with the last
error), and sending a failed delivery again (audited) to a real receiver on loopback, which gets
the same webhook-id. Readers see the pages but change nothing; the buttons need the CSRF token."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError, user_create
from leadflow.journeys import webhooks as hooks
from leadflow.journeys.models import WebhookDelivery, WebhookEndpoint

from test_journeys_webhooks import (Receiver, endpoint_for, enroll, hook_journey, people, receiver,  # noqa: F401
                                    receiver_clock)

pytestmark = pytest.mark.django_db

BASE = "/api/journey-webhooks"


def call(client, keys, method: str, path: str, body=None):
    kwargs = {"HTTP_AUTHORIZATION": keys.bearer}
    if body is not None:
        return getattr(client, method)(path, body, content_type="application/json", **kwargs)
    if method == "post":  # no body at all, as `curl -X POST` sends
        return client.generic("POST", path, b"", **kwargs)
    return getattr(client, method)(path, **kwargs)


def failed_deliveries(ws, receiver, n: int = 3):
    """`n` people through a journey's webhook step to a receiver that refuses them all (HTTP 400:
    failed at the first attempt)."""
    endpoint = endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    receiver.default = (400, {})
    enroll(journey, people(ws, *[f"p{i}" for i in range(n)]))
    assert hooks.webhooks_dispatch() == n
    assert set(WebhookDelivery.objects.filter(journey=journey).values_list("status", flat=True)) == {"failed"}
    return endpoint, journey


def member(ws, role: str, name: str | None = None, **client_options) -> Client:
    c = Client(**client_options)
    c.force_login(user_create(username=name or role, password=f"pw-{role}-123", workspace=ws.workspace, role=role))
    return c


@pytest.fixture
def marketer(ws):
    return member(ws, "marketer", "mara")


# --- the service ----------------------------------------------------------------------------------

def test_retry_puts_a_failed_or_review_delivery_back_now_and_refuses_anything_else(ws, frozen_clock, receiver):
    endpoint, journey = failed_deliveries(ws, receiver, n=2)
    first, second = WebhookDelivery.objects.filter(journey=journey).order_by("pk")
    frozen_clock.advance(hours=2)
    again = hooks.webhook_delivery_retry(delivery=first, actor="user:7")
    assert (again.status, again.attempts, again.error, again.next_attempt_at) == ("pending", 0, "",
                                                                                 frozen_clock.current)
    entry = AuditEntry.objects.get(action="webhook_delivery.retry")
    assert (entry.actor, entry.target) == ("user:7", f"webhook_delivery:{first.pk}")
    assert entry.data == {"endpoint": "crm", "msg_id": first.msg_id, "was": "failed", "attempts": 1,
                          "error": "HTTP 400: ok"}
    with pytest.raises(ServiceError, match="is pending: only a failed delivery"):
        hooks.webhook_delivery_retry(delivery=first, actor="user:7")

    WebhookDelivery.objects.filter(pk=second.pk).update(status="review")
    assert hooks.webhook_delivery_retry(delivery=second, actor="user:7").status == "pending"

    hooks.webhook_endpoint_disable(endpoint=endpoint, actor="user:7", reason="gateway moved")
    first.refresh_from_db()
    assert first.status == "failed"
    with pytest.raises(ServiceError, match="'crm' is disabled \\(gateway moved\\): enable it"):
        hooks.webhook_delivery_retry(delivery=first, actor="user:7")


# --- the API --------------------------------------------------------------------------------------

def test_api_the_secret_is_in_the_answer_on_create_and_rotate_only(client, ws, other_ws, frozen_clock):
    made = call(client, ws, "post", BASE, {"name": "SMS gateway", "url": "https://sms.example/in?token=abc"})
    assert made.status_code == 201, made.content
    body = made.json()
    secret = body["secret"]
    endpoint = WebhookEndpoint.objects.get(pk=body["id"])
    assert secret == endpoint.secret and secret.startswith("whsec_")
    assert (body["slug"], body["url"], body["health"], body["waiting"]) == (
        "sms-gateway", "https://sms.example/in?token=abc", "unknown", 0)

    listed = call(client, ws, "get", BASE).json()
    assert [e["slug"] for e in listed["items"]] == ["sms-gateway"] and listed["next"] is None
    got = call(client, ws, "get", f"{BASE}/{endpoint.pk}").json()
    assert got["name"] == "SMS gateway"
    assert secret not in json.dumps(listed) + json.dumps(got) and "secret" not in got

    rotated = call(client, ws, "post", f"{BASE}/{endpoint.pk}/rotate-secret")
    assert rotated.status_code == 200
    endpoint.refresh_from_db()
    assert rotated.json()["secret"] == endpoint.secret != secret
    mine = "whsec_" + "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5"  # 24 bytes
    assert call(client, ws, "post", f"{BASE}/{endpoint.pk}/rotate-secret", {"secret": mine}).json()["secret"] == mine
    assert mine not in json.dumps(call(client, ws, "get", f"{BASE}/{endpoint.pk}").json())

    patched = call(client, ws, "patch", f"{BASE}/{endpoint.pk}", {"name": "SMS", "url": "https://sms2.example/in"})
    assert (patched.status_code, patched.json()["name"], patched.json()["url"]) == (200, "SMS", "https://sms2.example/in")
    assert call(client, other_ws, "get", f"{BASE}/{endpoint.pk}").status_code == 404
    assert call(client, other_ws, "get", BASE).json()["items"] == []


@pytest.mark.parametrize("method, path, body, message", [
    ("post", "", {"name": "Bad", "url": "ftp://x.example/in"}, "url: must start with http:// or https://"),
    ("post", "", {"name": "Bad", "url": "https://x.example", "secret": "hunter2"}, "whsec_"),
    ("post", "", {"name": "Dup", "url": "https://x.example", "slug": "sms"}, "a webhook endpoint 'sms' already exists"),
    ("patch", "/{id}", {"url": "mailto:x@example.com"}, "url: must start with http"),
    ("post", "/{id}/rotate-secret", {"secret": "whsec_c2hvcnQ="}, "24 to 64 bytes"),
    ("get", "/{id}/deliveries?status=lost", None, "status: one of pending, sending, delivered, failed, review"),
])
def test_api_bad_input_answers_400_with_the_reason(client, ws, method, path, body, message):
    endpoint = hooks.webhook_endpoint_create(workspace=ws.workspace, name="SMS", url="https://sms.example",
                                             actor="test")
    before = endpoint.secret
    answer = call(client, ws, method, BASE + path.format(id=endpoint.pk), body)
    assert answer.status_code == 400, answer.content
    assert message in answer.json()["detail"]
    endpoint.refresh_from_db()
    assert (endpoint.url, endpoint.secret) == ("https://sms.example", before)
    assert WebhookEndpoint.objects.filter(workspace=ws.workspace).count() == 1


def test_api_deliveries_page_by_status_and_a_failed_one_goes_out_again_with_the_same_id(
        client, ws, frozen_clock, receiver):
    endpoint, journey = failed_deliveries(ws, receiver)
    url = f"{BASE}/{endpoint.pk}/deliveries"
    first = call(client, ws, "get", f"{url}?limit=2").json()
    second = call(client, ws, "get", f"{url}?limit=2&next={first['next']}").json()
    assert len(first["items"]) == 2 and len(second["items"]) == 1 and second["next"] is None
    ids = [d["id"] for d in first["items"] + second["items"]]
    assert ids == sorted(WebhookDelivery.objects.filter(journey=journey).values_list("pk", flat=True), reverse=True)
    item = first["items"][0]
    assert (item["status"], item["attempts"], item["last_status"], item["error"]) == ("failed", 1, 400, "HTTP 400: ok")
    assert (item["journey"], item["node"], item["event_type"]) == ("hooks", "tell-crm", "lead.nurtured")
    assert item["payload"]["data"]["contact"]["id"] == item["contact_id"]
    assert len(call(client, ws, "get", f"{url}?status=failed").json()["items"]) == 3
    assert call(client, ws, "get", f"{url}?status=delivered").json()["items"] == []

    retried = call(client, ws, "post", f"{url}/{item['id']}/retry")
    assert retried.status_code == 200
    assert (retried.json()["status"], retried.json()["error"]) == ("pending", "")
    refused = call(client, ws, "post", f"{url}/{item['id']}/retry")
    assert refused.status_code == 400 and "only a failed delivery" in refused.json()["detail"]
    other = hooks.webhook_endpoint_create(workspace=ws.workspace, name="Other", url="https://o.example", actor="t")
    assert call(client, ws, "post", f"{BASE}/{other.pk}/deliveries/{ids[1]}/retry").status_code == 404

    receiver.default = (200, {})
    assert hooks.webhooks_dispatch() == 1, "only the retried delivery goes out"
    delivered, = call(client, ws, "get", f"{url}?status=delivered").json()["items"]
    assert delivered["id"] == item["id"] and delivered["attempts"] == 1
    assert receiver.ids().count(item["msg_id"]) == 2 and receiver.requests[-1]["verified"] is True
    assert call(client, ws, "get", f"{BASE}/{endpoint.pk}").json()["health"] == "ok"


def test_api_disable_fails_what_waits_and_enable_lets_it_be_retried(client, ws, frozen_clock, receiver):
    endpoint = endpoint_for(ws, receiver)
    journey = hook_journey(ws)
    enroll(journey, people(ws, "ann"))
    assert call(client, ws, "get", f"{BASE}/{endpoint.pk}").json()["waiting"] == 1
    off = call(client, ws, "post", f"{BASE}/{endpoint.pk}/disable", {"reason": "moving to a new gateway"}).json()
    assert (off["health"], off["disabled_reason"], off["waiting"]) == ("disabled", "moving to a new gateway", 0)
    delivery = WebhookDelivery.objects.get(journey=journey)
    assert delivery.status == "failed" and "moving to a new gateway" in delivery.error
    refused = call(client, ws, "post", f"{BASE}/{endpoint.pk}/deliveries/{delivery.pk}/retry")
    assert refused.status_code == 400 and "enable it before" in refused.json()["detail"]

    on = call(client, ws, "post", f"{BASE}/{endpoint.pk}/enable").json()
    assert (on["health"], on["disabled_at"]) == ("unknown", None)
    assert call(client, ws, "post", f"{BASE}/{endpoint.pk}/deliveries/{delivery.pk}/retry").status_code == 200
    assert hooks.webhooks_dispatch() == 1 and receiver.ids() == [delivery.msg_id]
    bare = call(client, ws, "post", f"{BASE}/{endpoint.pk}/disable").json()
    assert bare["disabled_reason"] == "disabled by hand"


# --- the web pages --------------------------------------------------------------------------------

def health_of(page: str) -> dict[str, str]:
    return dict(re.findall(r'<tr data-endpoint="([^"]+)">.*?data-health="([^"]+)"', page, re.S))


def test_the_page_lists_endpoints_with_their_health_and_the_journeys_page_links_to_it(
        ws, marketer, frozen_clock, receiver):
    failed_deliveries(ws, receiver, n=1)  # crm: failing
    good = hooks.webhook_endpoint_create(workspace=ws.workspace, name="Ads", url=receiver.url + "?token=s3cret",
                                         actor="test")
    receiver.default = (200, {})
    WebhookDelivery.objects.create(workspace=ws.workspace, endpoint=good, event_type="x", payload={}, msg_id="msg_1",
                                   dedupe_key="t:1")
    hooks.webhooks_dispatch()
    gone = hooks.webhook_endpoint_create(workspace=ws.workspace, name="Old", url="https://old.example", actor="t")
    hooks.webhook_endpoint_disable(endpoint=gone, actor="test", reason="receiver retired")
    hooks.webhook_endpoint_create(workspace=ws.workspace, name="New", url="https://new.example", actor="t")

    assert 'href="/journeys/webhooks/"' in marketer.get("/journeys/").content.decode()
    page = marketer.get("/journeys/webhooks/").content.decode()
    assert health_of(page) == {"ads": "ok", "crm": "failing", "old": "disabled", "new": "unknown"}
    assert "receiver retired" in page
    assert "s3cret" not in page, "a token in the URL's query is not shown"
    assert good.secret not in page and 'data-testid="new-endpoint"' in page


def test_registering_an_endpoint_shows_its_secret_on_that_page_only(ws, marketer, frozen_clock):
    answer = marketer.post("/journeys/webhooks/new/", {"name": "SMS gateway", "url": "https://sms.example/in",
                                                       "slug": "", "secret": ""})
    endpoint = WebhookEndpoint.objects.get(workspace=ws.workspace)
    page = answer.content.decode()
    assert answer.status_code == 200 and answer["Cache-Control"] == "no-store"
    assert f'<code id="secret" class="mono key">{endpoint.secret}</code>' in page
    assert endpoint.slug == "sms-gateway"
    for path in ("/journeys/webhooks/", f"/journeys/webhooks/{endpoint.pk}/"):
        assert endpoint.secret not in marketer.get(path).content.decode()

    bad = marketer.post("/journeys/webhooks/new/", {"name": "Broken", "url": "sms.example/in",
                                                    "secret": "whsec_leaked"})
    page = bad.content.decode()
    assert bad.status_code == 400 and "url: must start with http:// or https://" in page
    assert 'value="Broken"' in page and "whsec_leaked" not in page
    assert WebhookEndpoint.objects.filter(workspace=ws.workspace).count() == 1


def test_an_endpoints_page_shows_deliveries_with_status_and_last_error_and_retries_a_failed_one(
        ws, marketer, frozen_clock, receiver):
    endpoint, journey = failed_deliveries(ws, receiver)
    path = f"/journeys/webhooks/{endpoint.pk}/"
    page = marketer.get(path).content.decode()
    rows = re.findall(r'<tr data-delivery="(\d+)">(.*?)</tr>', page, re.S)
    assert len(rows) == 3
    for _, row in rows:
        assert 'data-status="failed"' in row and "HTTP 400: ok" in row and ">Retry</button>" in row
    assert 'data-health="failing"' in page
    assert "No delivered deliveries." in marketer.get(path + "?status=delivered").content.decode()

    target = int(rows[0][0])
    done = marketer.post(f"{path}deliveries/{target}/retry/", {"status": "failed"})
    assert done.status_code == 302 and done["Location"] == path + "?status=failed"
    assert WebhookDelivery.objects.get(pk=target).status == "pending"
    page = marketer.get(path + "?status=failed").content.decode()
    assert f'data-delivery="{target}"' not in page and "goes out again" in page
    pending = marketer.get(path + "?status=pending").content.decode()
    assert f'data-delivery="{target}"' in pending and ">Retry</button>" not in pending
    again = marketer.post(f"{path}deliveries/{target}/retry/", follow=True).content.decode()
    assert "only a failed delivery" in again
    assert AuditEntry.objects.filter(action="webhook_delivery.retry", actor__startswith="user:").count() == 1


def test_rotate_update_disable_and_enable_from_the_page(ws, marketer, frozen_clock):
    endpoint = hooks.webhook_endpoint_create(workspace=ws.workspace, name="SMS", url="https://sms.example",
                                             actor="test")
    path = f"/journeys/webhooks/{endpoint.pk}/"
    old = endpoint.secret
    rotated = marketer.post(f"{path}rotate/")
    endpoint.refresh_from_db()
    assert endpoint.secret != old and endpoint.secret in rotated.content.decode()
    assert rotated["Cache-Control"] == "no-store"
    assert endpoint.secret not in marketer.get(path).content.decode()

    bad = marketer.post(f"{path}edit/", {"name": "SMS", "url": "gopher://sms.example", "slug": "sms"})
    assert bad.status_code == 400 and "url: must start with http" in bad.content.decode()
    assert marketer.post(f"{path}edit/", {"name": "Texts", "url": "https://texts.example/in",
                                          "slug": "texts"}).status_code == 302
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.url, endpoint.slug) == ("Texts", "https://texts.example/in", "texts")

    marketer.post(f"{path}disable/", {"reason": "new provider next week"})
    endpoint.refresh_from_db()
    assert endpoint.disabled_reason == "new provider next week"
    page = marketer.get(path).content.decode()
    assert 'data-testid="disabled"' in page and "new provider next week" in page and ">Enable</button>" in page
    marketer.post(f"{path}enable/")
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is None
    assert marketer.get(f"{path}enable/").status_code == 405


@pytest.mark.parametrize("role", ["sales", "analyst", "compliance"])
def test_readers_see_the_pages_but_cannot_change_anything(ws, frozen_clock, receiver, role):
    endpoint, journey = failed_deliveries(ws, receiver, n=1)
    delivery = WebhookDelivery.objects.get(journey=journey)
    reader = member(ws, role)
    listing = reader.get("/journeys/webhooks/").content.decode()
    page = reader.get(f"/journeys/webhooks/{endpoint.pk}/").content.decode()
    assert 'data-endpoint="crm"' in listing and "HTTP 400: ok" in page
    assert "Register an endpoint" not in listing
    assert "Retry" not in page and "Rotate secret" not in page and "Disable" not in page
    secret = endpoint.secret
    for path, data in [("new/", {"name": "X", "url": "https://x.example"}), (f"{endpoint.pk}/rotate/", {}),
                       (f"{endpoint.pk}/edit/", {"name": "X", "url": "https://x.example", "slug": "x"}),
                       (f"{endpoint.pk}/disable/", {}), (f"{endpoint.pk}/enable/", {}),
                       (f"{endpoint.pk}/deliveries/{delivery.pk}/retry/", {})]:
        assert reader.post(f"/journeys/webhooks/{path}", data).status_code == 403, path
    endpoint.refresh_from_db()
    delivery.refresh_from_db()
    assert (endpoint.secret, endpoint.name, endpoint.disabled_at, delivery.status) == (secret, "CRM", None, "failed")
    assert WebhookEndpoint.objects.filter(workspace=ws.workspace).count() == 1


def test_the_buttons_need_the_csrf_token_and_another_workspaces_endpoints_are_not_found(ws, other_ws, frozen_clock):
    endpoint = hooks.webhook_endpoint_create(workspace=ws.workspace, name="SMS", url="https://sms.example",
                                             actor="test")
    strict = member(ws, "admin", "ada", enforce_csrf_checks=True)
    page = strict.get(f"/journeys/webhooks/{endpoint.pk}/").content.decode()
    assert strict.post(f"/journeys/webhooks/{endpoint.pk}/disable/").status_code == 403
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is None
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert strict.post(f"/journeys/webhooks/{endpoint.pk}/disable/",
                       {"csrfmiddlewaretoken": token}).status_code == 302
    endpoint.refresh_from_db()
    assert endpoint.disabled_reason == "disabled by hand"

    outsider = member(other_ws, "admin", "olga")
    assert outsider.get(f"/journeys/webhooks/{endpoint.pk}/").status_code == 404
    assert outsider.post(f"/journeys/webhooks/{endpoint.pk}/enable/").status_code == 404
    assert 'data-endpoint="sms"' not in outsider.get("/journeys/webhooks/").content.decode()


# --- the command ----------------------------------------------------------------------------------

def leadflow(*argv) -> str:
    out = io.StringIO()
    call_command(*argv, stdout=out)
    return out.getvalue()


def test_cli_lists_creates_rotates_disables_and_enables_endpoints(ws, frozen_clock):
    assert "no webhook endpoints yet" in leadflow("journeys", "webhooks", "list")
    out = leadflow("journeys", "webhooks", "create", "SMS gateway", "https://sms.example/in?token=abc",
                   "--slug", "sms")
    endpoint = WebhookEndpoint.objects.get(workspace=ws.workspace, slug="sms")
    assert out.splitlines() == ["created sms  https://sms.example/in",
                                f"secret  {endpoint.secret}  (shown once: give it to the receiver)"]
    assert leadflow("journeys", "webhooks", "list").splitlines() == [
        "SLUG  HEALTH   WAITING  URL                     NAME",
        "sms   unknown  0        https://sms.example/in  SMS gateway"]

    old = endpoint.secret
    out = leadflow("journeys", "webhooks", "rotate", "sms")
    endpoint.refresh_from_db()
    assert endpoint.secret != old and f"secret  {endpoint.secret}" in out

    assert "disabled sms" in leadflow("journeys", "webhooks", "disable", "sms", "--reason", "moving")
    assert "sms   disabled (moving)" in leadflow("journeys", "webhooks", "list")
    assert "already disabled" in leadflow("journeys", "webhooks", "disable", "sms")
    assert leadflow("journeys", "webhooks", "enable", "sms").strip() == "enabled sms"
    endpoint.refresh_from_db()
    assert endpoint.disabled_at is None
    assert [a.actor for a in AuditEntry.objects.filter(target=f"webhook_endpoint:{endpoint.pk}")] == ["cli"] * 4

    with pytest.raises(CommandError, match="there is no webhook endpoint 'nope'"):
        leadflow("journeys", "webhooks", "rotate", "nope")
    with pytest.raises(CommandError, match="url: must start with http:// or https://"):
        leadflow("journeys", "webhooks", "create", "Bad", "sms.example")
    with pytest.raises(CommandError, match="already exists"):
        leadflow("journeys", "webhooks", "create", "Again", "https://sms.example", "--slug", "sms")
