"""Unmodified third-party tracking clients talking to a live LeadFlow server on loopback."""

from __future__ import annotations

import pytest
from django.test import Client as DjangoClient

from leadflow.contacts.models import Contact
from leadflow.core.pipeline import process_pending
from leadflow.tracking.models import Event

from conftest import make_workspace

pytestmark = pytest.mark.django_db(transaction=True)


def _profile_via_api(keys, **filters):
    api = DjangoClient()
    listing = api.get("/api/contacts", filters, HTTP_AUTHORIZATION=keys.bearer).json()
    assert len(listing["items"]) == 1, listing
    contact = listing["items"][0]
    events = api.get(f"/api/contacts/{contact['id']}/events", HTTP_AUTHORIZATION=keys.bearer).json()
    # The events sent; the lifecycle stage adds its own `Lifecycle Stage Changed` ones.
    return contact, [e for e in events["items"] if e["event"] != "Lifecycle Stage Changed"]


def test_segment_python_client_batches_reach_one_profile(live_server):
    from segment.analytics import Client

    keys = make_workspace("Segment client")
    errors = []
    client = Client(keys.write_key, host=live_server.url, on_error=lambda e, batch: errors.append(e),
                    max_retries=1, upload_interval=0.05)
    campaign = {"source": "google", "medium": "cpc", "name": "retirement-2026", "term": "pension plan"}
    client.page(anonymous_id="visitor-7", name="Retirement guide", category="Guides",
                properties={"url": "https://bank.example/guides/retirement"},
                context={"campaign": campaign,
                         "page": {"url": "https://bank.example/guides/retirement?utm_source=google",
                                  "referrer": "https://www.google.com/"},
                         "ip": "198.51.100.23", "userAgent": "Mozilla/5.0 (Macintosh)"})
    client.track(anonymous_id="visitor-7", event="Asset Downloaded",
                 properties={"magnet_slug": "retirement-guide"})
    client.identify(user_id="cust-1001", anonymous_id="visitor-7",
                    traits={"email": "Maria.Costa@Example.com", "firstName": "Maria", "lastName": "Costa",
                            "phone": "912 345 678", "country": "PT", "plan": "savings"})
    client.group(user_id="cust-1001", group_id="acct-77", traits={"name": "Costa & Filhos", "employees": 40})
    client.track(user_id="cust-1001", event="Webinar Registered", properties={"webinar": "pensions-101"})
    client.flush()
    client.join()
    assert not errors, errors
    assert Event.objects.filter(workspace=keys.workspace).count() == 5
    assert not Event.objects.filter(sent_at__isnull=True).exists(), "batch sentAt applies to each message"

    process_pending()
    contact, events = _profile_via_api(keys, email="maria.costa@example.com")
    assert contact["user_id"] == "cust-1001"
    assert contact["first_name"] == "Maria" and contact["phone"] == "+351912345678"
    assert contact["traits"]["plan"] == "savings"
    assert contact["company"]["name"] == "Costa & Filhos"
    assert contact["source"]["channel"] == "paid_search"
    assert contact["source"]["utm_campaign"] == "retirement-2026"
    assert contact["source"]["utm_term"] == "pension plan"
    assert [e["type"] for e in events] == ["page", "track", "identify", "group", "track"]
    assert events[0]["context"]["ip"] == "198.51.100.23"
    assert events[0]["context"]["library"]["name"] == "analytics-python"
    assert Contact.objects.filter(workspace=keys.workspace).count() == 1


def test_segment_client_sync_mode_and_retry_is_idempotent(live_server):
    from segment.analytics import Client

    keys = make_workspace("Sync client")
    client = Client(keys.write_key, host=live_server.url, sync_mode=True)
    client.track(user_id="u1", event="Trial Started", message_id="fixed-id-1")
    client.track(user_id="u1", event="Trial Started", message_id="fixed-id-1")  # a retry
    assert Event.objects.filter(workspace=keys.workspace).count() == 1


def test_segment_client_with_bad_key_stores_nothing(live_server):
    from segment.analytics import Client

    make_workspace("Someone")
    errors = []
    client = Client("lfw_not-a-key", host=live_server.url, sync_mode=True, max_retries=0,
                    on_error=lambda e, batch: errors.append(e))
    with pytest.raises(Exception) as failure:
        client.track(user_id="u1", event="Nope")
    assert "401" in str(failure.value) or getattr(failure.value, "status", None) == 401
    assert not Event.objects.exists()


def test_rudderstack_client_sends_gzip(live_server):
    from rudderstack.analytics.client import Client

    keys = make_workspace("RudderStack client")
    errors = []
    client = Client(keys.write_key, host=live_server.url, gzip=True, sync_mode=True,
                    on_error=lambda e, batch: errors.append(e))
    client.identify(user_id="r-1", traits={"email": "ops@rudder.example", "title": "Ops lead"})
    client.track(user_id="r-1", event="Pricing Viewed", properties={"plan": "team"})
    assert not errors, errors
    process_pending()
    contact, events = _profile_via_api(keys, user_id="r-1")
    assert contact["email"] == "ops@rudder.example" and contact["title"] == "Ops lead"
    assert [e["event"] for e in events] == ["", "Pricing Viewed"]
