"""Lead magnet delivery by email: a form that offers a magnet (or an `Asset Requested` event) gets
the person a transactional email with the tracked download link, through the real dispatcher to
an SMTP server on loopback; the link records the download on the same person."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.test import Client

from leadflow.consent.services import suppression_add
from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError, user_create
from leadflow.messaging import dispatch
from leadflow.messaging.models import Message, Template, TemplateVersion
from leadflow.messaging.sending import sending_server_create
from leadflow.tracking.forms import form_save, magnet_save
from leadflow.tracking.magnet_delivery import TEMPLATE_SLUG, magnet_deliveries_queue
from leadflow.tracking.models import Event

from conftest import post_batch
from smtp_sink import dispatching_to_sink, sending_to_sink

pytestmark = pytest.mark.django_db

PUBLIC = "https://lf.example.com"
FIELDS = [{"name": "email", "label": "Email", "type": "email", "required": True},
          {"name": "first_name", "label": "First name", "type": "text"}]


@pytest.fixture
def sink(ws):
    with sending_to_sink(ws.workspace, PUBLIC, from_name="Acme Wealth", from_email="hello@acme.test") as server:
        yield server


@pytest.fixture
def guide(ws):
    magnet = magnet_save(workspace=ws.workspace, slug="retirement-guide", name="Your Guide to a Secure Retirement",
                         kind="ebook", delivery_url="https://cdn.example.com/retirement.pdf",
                         description="Twelve pages on saving, investing and drawing down.")
    form = form_save(workspace=ws.workspace, slug="guide", name="Get the guide", fields=FIELDS,
                     consent_text="Send me the newsletter too", consent_topic="newsletter", lead_magnet=magnet.slug)
    return magnet, form


def _submit(client, ws, form, **fields):
    data = {"email": "rui@example.com", "first_name": "Rui", "lf_aid": "visitor-1", **fields}
    return client.post(f"/f/{ws.workspace.slug}/{form.slug}/", data, REMOTE_ADDR="198.51.100.7")


def _text(received) -> str:
    return received.message.get_body(preferencelist=("plain",)).get_content()


def _path(url: str) -> str:
    assert url.startswith(PUBLIC + "/"), url
    return url[len(PUBLIC):]


def test_a_form_submission_emails_the_download_link_that_records_the_download(client, ws, sink, guide, process,
                                                                                frozen_clock):
    magnet, form = guide
    page = _submit(client, ws, form)  # the marketing consent box is left unticked
    assert page.status_code == 200 and "also emailing you the link" in page.content.decode()
    process()
    rui = Contact.objects.get(workspace=ws.workspace)
    [queued] = Message.objects.filter(workspace=ws.workspace)
    assert (queued.kind, queued.topic, queued.source, queued.contact_id) == ("transactional", "", "magnet:retirement-guide",
                                                                             rui.pk)
    assert queued.template.slug == TEMPLATE_SLUG

    dispatch.dispatch_run()
    [received] = sink.messages
    assert received.rcpt_tos == ["rui@example.com"]
    assert received.message["Subject"] == "Your ebook: Your Guide to a Secure Retirement"
    body = _text(received)
    assert "Hello Rui" in body and "Twelve pages on saving" in body and "1 Main St, Springfield" in body
    assert Message.objects.get(pk=queued.pk).status == "sent"
    # Transactional: no List-Unsubscribe one-click for mail the person asked for.
    assert received.message["List-Unsubscribe-Post"] is None

    # The link in the email is the click-tracked magnet link: it ends at the asset and records
    # the download on Rui's profile.
    [link] = re.findall(re.escape(PUBLIC) + r"/e/c/\S+", body)
    frozen_clock.advance(minutes=5)
    browser = Client()
    hop = browser.get(_path(link))
    assert hop.status_code == 302 and "/m/" in hop["Location"]
    download = browser.get(_path(hop["Location"]))
    assert download.status_code == 302 and download["Location"] == "https://cdn.example.com/retirement.pdf"
    process()
    downloaded = Event.objects.get(workspace=ws.workspace, event="Asset Downloaded")
    assert downloaded.contact_id == rui.pk and downloaded.properties["magnet_slug"] == "retirement-guide"

    # The magnet's figures count the delivery email.
    listed = client.get(f"/api/magnets/{magnet.pk}", HTTP_AUTHORIZATION=ws.bearer).json()
    assert (listed["delivery_emails"], listed["downloads"], listed["email_delivery"]) == (1, 1, True)


def test_processing_a_request_again_queues_nothing_twice(ws, guide, client, process, frozen_clock):
    _, form = guide
    _submit(client, ws, form)
    process()
    rui = Contact.objects.get(workspace=ws.workspace)
    event = Event.objects.get(workspace=ws.workspace, event="Form Submitted")
    assert magnet_deliveries_queue(workspace_id=ws.workspace.pk, requests=[(rui, event)]) == 0
    assert Message.objects.filter(workspace=ws.workspace).count() == 1
    _submit(client, ws, form)  # a second request is a second email
    process()
    assert Message.objects.filter(workspace=ws.workspace, source="magnet:retirement-guide").count() == 2


def test_no_email_when_delivery_is_off_or_the_request_is_old_history(ws, guide, client, process, frozen_clock):
    magnet, form = guide
    magnet_save(workspace=ws.workspace, magnet=magnet, slug=magnet.slug, name=magnet.name, kind=magnet.kind,
                delivery_url=magnet.delivery_url, email_delivery=False)
    page = _submit(client, ws, form)
    assert "also emailing you" not in page.content.decode() and "/m/" in page.content.decode()
    process()
    assert not Message.objects.filter(workspace=ws.workspace).exists()

    # History sent or imported days later asks for nothing now.
    magnet_save(workspace=ws.workspace, magnet=magnet, slug=magnet.slug, name=magnet.name, kind=magnet.kind,
                delivery_url=magnet.delivery_url, email_delivery=True)
    old = (frozen_clock() - dt.timedelta(days=3)).isoformat()
    post_batch(client, ws, [{"type": "track", "event": "Asset Requested", "anonymousId": "old-1", "timestamp": old,
                             "properties": {"magnet_slug": "retirement-guide"},
                             "context": {"traits": {"email": "old@example.com"}}}])
    process()
    assert not Message.objects.filter(workspace=ws.workspace).exists()


def test_an_asset_requested_event_from_the_site_is_answered_and_a_suppressed_address_is_not(
        ws, guide, client, sink, process, frozen_clock):
    suppression_add(workspace_id=ws.workspace.pk, email="bounced@example.com", reason="hard_bounce")
    post_batch(client, ws, [
        {"type": "track", "event": "Asset Requested", "anonymousId": f"site-{name}",
         "properties": {"magnet_slug": "retirement-guide"}, "context": {"traits": {"email": f"{name}@example.com"}}}
        for name in ("ana", "bounced")] + [
        {"type": "track", "event": "Asset Requested", "anonymousId": "site-x",
         "properties": {"magnet_slug": "no-such-magnet"}, "context": {"traits": {"email": "x@example.com"}}},
        {"type": "track", "event": "Asset Requested", "anonymousId": "site-anon",
         "properties": {"magnet_slug": "retirement-guide"}},
    ])
    process()
    assert sorted(Message.objects.filter(workspace=ws.workspace).values_list("to_email", flat=True)) == [
        "ana@example.com", "bounced@example.com"]
    dispatch.dispatch_run()
    assert [m.rcpt_tos for m in sink.messages] == [["ana@example.com"]]
    assert Message.objects.get(to_email="bounced@example.com").status == "blocked"


def test_a_magnet_can_have_its_own_transactional_delivery_template(ws, guide, client, sink, process, frozen_clock):
    magnet, form = guide
    mine = Template.objects.create(workspace=ws.workspace, name="Guide delivery", slug="guide-delivery",
                                   kind="transactional")
    marketing = Template.objects.create(workspace=ws.workspace, name="Newsletter", slug="newsletter")
    for template in (mine, marketing):
        version = TemplateVersion.objects.create(
            workspace=ws.workspace, template=template, number=1, status="approved",
            subject="{{ contact.first_name }}, here is {{ magnet_name }}",
            html='<p>Download: <a href="{{ magnet_download_url }}">the guide</a></p>')
        template.approved_version = version
        template.save(update_fields=["approved_version"])
    draft = Template.objects.create(workspace=ws.workspace, name="Draft", slug="draft", kind="transactional")

    def save(template):
        return magnet_save(workspace=ws.workspace, magnet=magnet, slug=magnet.slug, name=magnet.name,
                           kind=magnet.kind, delivery_url=magnet.delivery_url, delivery_template=template)

    with pytest.raises(ServiceError, match="must be transactional"):
        save("newsletter")
    with pytest.raises(ServiceError, match="no approved version"):
        save(draft.pk)
    with pytest.raises(ServiceError, match="no email template 'missing'"):
        save("missing")
    assert save("guide-delivery").delivery_template_id == mine.pk

    _submit(client, ws, form)
    process()
    dispatch.dispatch_run()
    [received] = sink.messages
    assert received.message["Subject"] == "Rui, here is Your Guide to a Secure Retirement"


def test_the_double_opt_in_confirmation_is_no_delivery_email(ws, guide, client):
    """QA bug: the "Delivery email" dropdown offered the built-in double opt-in confirmation, which
    needs an opt-in link a delivery email does not have."""
    from leadflow.consent.services import OPTIN_TEMPLATE_SLUG, optin_template_get

    magnet, _ = guide
    optin = optin_template_get(workspace_id=ws.workspace.pk)
    assert optin.slug == OPTIN_TEMPLATE_SLUG and optin.kind == "transactional" and optin.approved_version_id
    mine = Template.objects.create(workspace=ws.workspace, name="Guide delivery", slug="guide-delivery",
                                   kind="transactional")
    mine.approved_version = TemplateVersion.objects.create(workspace=ws.workspace, template=mine, number=1,
                                                           status="approved", subject="Here", html="<p>x</p>")
    mine.save(update_fields=["approved_version"])
    for ref in (OPTIN_TEMPLATE_SLUG, optin.pk):
        with pytest.raises(ServiceError, match="double opt-in confirmation"):
            magnet_save(workspace=ws.workspace, magnet=magnet, slug=magnet.slug, name=magnet.name, kind=magnet.kind,
                        delivery_url=magnet.delivery_url, delivery_template=ref)
    magnet.refresh_from_db()
    assert magnet.delivery_template_id is None
    refused = client.patch(f"/api/magnets/{magnet.pk}", {"delivery_template": OPTIN_TEMPLATE_SLUG},
                           content_type="application/json", HTTP_AUTHORIZATION=ws.bearer)
    assert refused.status_code == 400 and "double opt-in confirmation" in refused.content.decode()

    web = Client()
    web.force_login(user_create(username="marketer", password="pw-123456789", workspace=ws.workspace,
                                role="marketer"))
    page = web.get(f"/magnets/{magnet.pk}/edit/").content.decode()
    choices = re.search(r'<select name="delivery_template"[^>]*>(.*?)</select>', page, re.S).group(1)
    assert "Guide delivery" in choices and "Double opt-in confirmation" not in choices
    assert f'value="{optin.pk}"' not in choices
    posted = web.post(f"/magnets/{magnet.pk}/edit/", {
        "name": magnet.name, "slug": magnet.slug, "kind": "ebook", "delivery_url": magnet.delivery_url,
        "email_delivery": "on", "delivery_template": str(optin.pk)})
    assert posted.status_code == 200  # not a choice: the form says so and nothing is saved
    magnet.refresh_from_db()
    assert magnet.delivery_template_id is None


def test_the_api_and_the_web_page_set_email_delivery(ws, guide, client):
    magnet, _ = guide
    auth = {"HTTP_AUTHORIZATION": ws.bearer}
    created = client.post("/api/magnets", {"name": "Webinar replay", "kind": "webinar",
                                           "delivery_url": "https://acme.example/replay", "email_delivery": False},
                          content_type="application/json", **auth)
    assert created.status_code == 201, created.content
    assert (created.json()["email_delivery"], created.json()["delivery_template"]) == (False, None)
    refused = client.patch(f"/api/magnets/{magnet.pk}", {"delivery_template": "missing"},
                           content_type="application/json", **auth)
    assert refused.status_code == 400 and "no email template" in refused.content.decode()

    web = Client()
    web.force_login(user_create(username="marketer", password="pw-123456789", workspace=ws.workspace,
                                role="marketer"))
    resp = web.post(f"/magnets/{magnet.pk}/edit/",
                    {"name": magnet.name, "slug": magnet.slug, "kind": "ebook", "delivery_url": magnet.delivery_url,
                     "description": ""})
    assert resp.status_code == 302
    magnet.refresh_from_db()
    assert magnet.email_delivery is False  # an unticked box turns it off
    page = web.get("/magnets/").content.decode()
    assert "Delivery emails" in page and "email delivery is off" in page


def test_on_a_fresh_install_without_a_sender_the_email_waits_then_goes(ws, guide, client, process, frozen_clock):
    """Before anyone sets a From address, LEADFLOW_EMAIL_FROM's default (leadflow@localhost) cannot
    go on the wire: the delivery waits in the outbox, with the reason, and goes once it is set."""
    from leadflow.messaging.sending import messaging_settings_update, sending_status

    _, form = guide
    with dispatching_to_sink(PUBLIC) as server:
        sending_server_create(workspace=ws.workspace, name="Loopback", url=server.url, is_default=True,
                              rate_per_second=0)
        assert any("waits in the outbox" in w for w in sending_status(workspace=ws.workspace)["warnings"])
        _submit(client, ws, form)
        process()
        dispatch.dispatch_run()
        [waiting] = Message.objects.filter(workspace=ws.workspace)
        assert (waiting.status, waiting.attempts) == ("deferred", 0)
        assert "Email → Sending → Settings" in waiting.error and server.messages == []
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="hello@acme.test")
        dispatch.dispatch_run()
        assert server.messages == [], "it waits its five minutes"
        frozen_clock.advance(minutes=5)
        dispatch.dispatch_run()
        assert [m.rcpt_tos for m in server.messages] == [["rui@example.com"]]
        assert Message.objects.get(pk=waiting.pk).status == "sent"
