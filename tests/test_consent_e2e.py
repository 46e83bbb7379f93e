"""Consent end to end, through the real renderer, dispatcher and an SMTP server on loopback:
double opt-in (the confirmation email arrives, its link confirms, marketing on the topic then
goes out), and RFC 8058 one-click unsubscribe from the List-Unsubscribe header of a received
message (honoured at once: the next message is blocked by the gate)."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from leadflow.consent import services
from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Contact
from leadflow.messaging import dispatch
from leadflow.messaging.models import Message, Template, TemplateVersion
from leadflow.messaging.outbox import message_queue
from leadflow.messaging.sending import messaging_settings_update, sending_server_create

from smtp_sink import dispatching_to_sink

pytestmark = pytest.mark.django_db

PUBLIC = "https://lf.example.com"
HTML = """<p>Hi {{ contact.first_name }}, our next webinar is on Thursday.</p>
<p>{{ postal_address }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>"""


@pytest.fixture
def sink():
    with dispatching_to_sink(PUBLIC) as server:
        yield server


def _text_of(received) -> str:
    message = received.message
    part = message.get_body(preferencelist=("plain",))
    return part.get_content()


def _path(url: str) -> str:
    assert url.startswith(PUBLIC + "/"), url
    return url[len(PUBLIC):]


def test_double_opt_in_and_one_click_unsubscribe_through_the_dispatcher(ws, sink, frozen_clock):
    messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme Events", from_email="events@acme.test",
                              postal_address="1 Main St, Springfield")
    sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True, rate_per_second=0)
    services.topic_create(workspace_id=ws.workspace.pk, name="Webinars", mode="opt_in", double_opt_in=True, actor="user:1")
    template = Template.objects.create(workspace=ws.workspace, name="Webinar", slug="webinar", topic="webinars")
    version = TemplateVersion.objects.create(workspace=ws.workspace, template=template, number=1,
                                             subject="Webinar on Thursday", html=HTML, status="approved")
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    ada = Contact.objects.create(workspace=ws.workspace, email="ada@example.org", first_name="Ada")

    # She asks for webinars: a confirmation is queued; marketing on the topic is held back.
    services.subscription_set(contact=ada, topic="webinars", granted=True, source="form:webinar",
                              wording="Invite me to your webinars")
    early = message_queue(workspace_id=ws.workspace.pk, contact=ada, template=template, source="test",
                          dedupe_key="early")
    dispatch.dispatch_run()
    assert Message.objects.get(pk=early.pk).status == "blocked"
    [confirmation] = sink.messages
    assert confirmation.rcpt_tos == ["ada@example.org"]
    body = _text_of(confirmation)
    assert "Webinars" in body and "1 Main St, Springfield" in body
    [link] = re.findall(re.escape(PUBLIC) + r"/c/\S+", body)

    # Following the link shows a button; pressing it records the consent with the form's wording.
    page = Client()
    assert page.get(_path(link)).status_code == 200
    assert not ConsentRecord.objects.filter(contact=ada, topic="webinars").exists()
    assert page.post(_path(link)).status_code == 200
    record = ConsentRecord.objects.get(contact=ada, topic="webinars")
    assert (record.status, record.wording, record.source) == ("granted", "Invite me to your webinars", "form:webinar")

    # Now the webinar email goes out, with a one-click unsubscribe header.
    invite = message_queue(workspace_id=ws.workspace.pk, contact=ada, template=template, source="test",
                           dedupe_key="invite")
    dispatch.dispatch_run()
    assert Message.objects.get(pk=invite.pk).status == "sent"
    received = sink.messages[-1].message
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [https] = [u for u in re.findall(r"<([^>]+)>", received["List-Unsubscribe"]) if u.startswith("https://")]

    # The mail client's POST, without cookie or CSRF token, unsubscribes at once.
    response = Client(enforce_csrf_checks=True).post(_path(https), "List-Unsubscribe=One-Click",
                                                     content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    latest = ConsentRecord.objects.filter(contact=ada, topic="webinars").order_by("-at", "-pk").first()
    assert (latest.status, latest.source) == ("withdrawn", "one_click")
    assert Message.objects.get(pk=invite.pk).unsubscribed_at is not None
    later = message_queue(workspace_id=ws.workspace.pk, contact=ada, template=template, source="test",
                          dedupe_key="later")
    dispatch.dispatch_run()
    assert Message.objects.get(pk=later.pk).status == "blocked"
    assert len(sink.messages) == 2
