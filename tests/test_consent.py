"""Consent services and public pages: topics, subscriptions, double opt-in (services, hosted form,
confirmation page), one-click unsubscribe (RFC 8058), the preference centre, suppressions."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from leadflow.consent import services
from leadflow.consent.gate import gate_check
from leadflow.consent.links import optin_confirm_url, preferences_url, unsubscribe_url
from leadflow.consent.models import ConsentRecord, MarketingPause, OptInRequest, Suppression, Topic
from leadflow.contacts.models import Contact
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError
from leadflow.messaging.models import Message, MessageEvent, Template
from leadflow.messaging.tokens import token_make
from leadflow.tracking.forms import form_save
from leadflow.tracking.models import Event

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc


def person(ws, email: str = "ada@acme.example", **fields) -> Contact:
    return Contact.objects.create(workspace=ws.workspace, email=email, first_name="Ada", **fields)


def mail(ws, contact: Contact | None, *, topic: str = "", kind: str = "marketing", to: str | None = None) -> Message:
    return Message.objects.create(workspace=ws.workspace, contact=contact, kind=kind, topic=topic, status="sent",
                                  to_email=to if to is not None else contact.email)


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[-1] if url.startswith("http") else url


def records(contact: Contact, topic: str | None = None):
    qs = ConsentRecord.objects.filter(contact=contact).order_by("at", "pk")
    return list(qs.filter(topic=topic) if topic else qs)


@pytest.fixture
def topics(ws):
    return {
        "newsletter": services.topic_create(workspace_id=ws.workspace.pk, name="Newsletter", actor="user:1",
                                            description="Our monthly letter"),
        "offers": services.topic_create(workspace_id=ws.workspace.pk, name="Offers", mode="opt_in", actor="user:1"),
        "events": services.topic_create(workspace_id=ws.workspace.pk, name="Events", mode="opt_in",
                                        double_opt_in=True, actor="user:1"),
        "product": services.topic_create(workspace_id=ws.workspace.pk, name="Product updates", actor="user:1",
                                         double_opt_in_countries=["de", " at"]),
    }


# --- topics ------------------------------------------------------------------------------------

def test_topics_slugs_are_unique_marketing_is_reserved_and_countries_checked(ws, other_ws, topics):
    assert topics["product"].slug == "product-updates"
    assert topics["product"].double_opt_in_countries == ["AT", "DE"]
    assert [t.position for t in topics.values()] == [0, 1, 2, 3]
    with pytest.raises(ServiceError, match="already exists"):
        services.topic_create(workspace_id=ws.workspace.pk, name="Newsletter", actor="user:1")
    with pytest.raises(ServiceError, match="reserved"):
        services.topic_create(workspace_id=ws.workspace.pk, name="All", slug="marketing", actor="user:1")
    with pytest.raises(ServiceError, match="two-letter"):
        services.topic_create(workspace_id=ws.workspace.pk, name="X", double_opt_in_countries=["Germany"],
                              actor="user:1")
    with pytest.raises(ServiceError, match="mode"):
        services.topic_update(topic=topics["offers"], mode="sometimes", actor="user:1")
    assert services.topic_create(workspace_id=other_ws.workspace.pk, name="Newsletter", actor="k").slug == "newsletter"
    updated = services.topic_update(topic=topics["offers"], name="Special offers", double_opt_in_countries="fr, FR",
                                    actor="user:1")
    assert (updated.name, updated.slug, updated.double_opt_in_countries) == ("Special offers", "offers", ["FR"])
    services.topic_archive(topic=updated, actor="user:1")
    assert Topic.objects.get(pk=updated.pk).archived_at is not None
    assert AuditEntry.objects.filter(workspace=ws.workspace, action="topic.archive", target="topic:offers").exists()


def test_an_opt_out_topic_cannot_need_double_opt_in_for_everyone(ws, topics):
    """Opt-out + double opt-in for everyone would block everybody until they confirmed (gate rule
    4): refused on create and update; double opt-in by country on an opt-out topic stays allowed."""
    with pytest.raises(ServiceError, match="opt-out topic cannot need double opt-in for everyone"):
        services.topic_create(workspace_id=ws.workspace.pk, name="Webinars", double_opt_in=True, actor="user:1")
    with pytest.raises(ServiceError, match="opt-out topic cannot need double opt-in for everyone"):
        services.topic_create(workspace_id=ws.workspace.pk, name="Webinars", mode="opt_out", double_opt_in=True,
                              actor="user:1")
    assert not Topic.objects.filter(workspace=ws.workspace, slug="webinars").exists()
    with pytest.raises(ServiceError, match="opt-out topic cannot need double opt-in"):
        services.topic_update(topic=topics["newsletter"], double_opt_in=True, actor="user:1")
    with pytest.raises(ServiceError, match="opt-out topic cannot need double opt-in"):
        services.topic_update(topic=topics["events"], mode="opt_out", actor="user:1")  # opt-in + double opt-in
    assert (Topic.objects.get(pk=topics["newsletter"].pk).double_opt_in,
            Topic.objects.get(pk=topics["events"].pk).mode) == (False, "opt_in")
    # allowed: opt-in with double opt-in, opt-out with double opt-in by country, and turning both at once
    assert topics["product"].mode == "opt_out" and topics["product"].double_opt_in_countries == ["AT", "DE"]
    both = services.topic_update(topic=topics["newsletter"], mode="opt_in", double_opt_in=True, actor="user:1")
    assert (both.mode, both.double_opt_in) == ("opt_in", True)
    # a topic saved before the rule can still be renamed and archived without choosing
    legacy = Topic.objects.create(workspace=ws.workspace, slug="legacy", name="Legacy", mode="opt_out",
                                  double_opt_in=True)
    assert services.topic_update(topic=legacy, name="Old legacy", actor="user:1").name == "Old legacy"
    with pytest.raises(ServiceError, match="opt-out topic cannot"):
        services.topic_update(topic=legacy, name="Legacy", mode="opt_out", double_opt_in=True, actor="user:1")


# --- subscriptions --------------------------------------------------------------------------------

def test_subscription_set_records_every_change_with_its_evidence(ws, topics, frozen_clock):
    ada = person(ws)
    done = services.subscription_set(contact=ada, topic="offers", granted=True, source="api", wording="Yes, offers",
                                     ip="198.51.100.4", user_agent="curl")
    assert done.changed and done.record.status == "granted"
    assert (done.record.wording, done.record.ip, done.record.source) == ("Yes, offers", "198.51.100.4", "api")
    again = services.subscription_set(contact=ada, topic="offers", granted=True, source="api")
    assert not again.changed and len(records(ada, "offers")) == 1
    frozen_clock.advance(minutes=1)
    services.subscription_set(contact=ada, topic="offers", granted=False, source="api")
    assert [r.status for r in records(ada, "offers")] == ["granted", "withdrawn"]
    with pytest.raises(ServiceError, match="no topic 'nope'"):
        services.subscription_set(contact=ada, topic="nope", granted=True, source="api")
    with pytest.raises(ServiceError, match="source"):
        services.subscription_set(contact=ada, topic="offers", granted=True, source="")


def test_subscribing_after_leaving_everything_grants_all_marketing_again(ws, topics, frozen_clock):
    ada = person(ws)
    services.unsubscribe_all(contact=ada, source="api")
    frozen_clock.advance(minutes=1)
    services.subscription_set(contact=ada, topic="offers", granted=True, source="form:x", wording="Offers please")
    assert [r.status for r in records(ada, "marketing")] == ["withdrawn", "granted"]
    assert gate_check(message=mail(ws, ada, topic="offers"), now=frozen_clock.current).action == "send"


def test_double_opt_in_sends_one_confirmation_and_records_consent_only_on_confirmation(ws, topics, frozen_clock):
    ada = person(ws)
    done = services.subscription_set(contact=ada, topic="events", granted=True, source="form:webinar",
                                     wording="Invite me to events", ip="203.0.113.5")
    assert done.pending and not records(ada, "events")
    request = done.optin
    confirmation = Message.objects.get(pk=request.message_id)
    assert (confirmation.kind, confirmation.to_email, confirmation.status) == ("transactional", ada.email, "queued")
    assert confirmation.context["optin_confirm_url"] == optin_confirm_url(request)
    assert confirmation.context["topic_name"] == "Events"
    template = Template.objects.get(workspace=ws.workspace, slug=services.OPTIN_TEMPLATE_SLUG)
    assert (template.kind, template.approved_version.status) == ("transactional", "approved")
    assert "{{ optin_confirm_url }}" in template.approved_version.html
    assert "{{ optin_confirm_url }}" in template.approved_version.text
    # Asking again within a day sends nothing more (a form cannot be used to mail-bomb someone).
    assert services.subscription_set(contact=ada, topic="events", granted=True, source="form:webinar").optin == request
    assert Message.objects.filter(kind="transactional").count() == 1
    # The confirmation email itself passes the gate; a marketing message on the topic does not.
    assert gate_check(message=confirmation, now=frozen_clock.current).action == "send"
    assert gate_check(message=mail(ws, ada, topic="events"), now=frozen_clock.current).action == "block"
    frozen_clock.advance(hours=3)
    token = optin_confirm_url(request).rsplit("/", 1)[1]
    record = services.optin_confirm(token=token, ip="192.0.2.1", user_agent="Firefox")
    assert (record.status, record.topic, record.wording, record.source) == (
        "granted", "events", "Invite me to events", "form:webinar")
    assert (record.ip, record.at) == ("192.0.2.1", frozen_clock.current)
    assert OptInRequest.objects.get(pk=request.pk).confirmed_at == frozen_clock.current
    assert services.optin_confirm(token=token) == record  # idempotent
    assert len(records(ada, "events")) == 1
    assert gate_check(message=mail(ws, ada, topic="events"), now=frozen_clock.current).action == "send"
    # The template is created once per workspace.
    bob = person(ws, "bob@acme.example")
    services.subscription_set(contact=bob, topic="events", granted=True, source="api")
    assert Template.objects.filter(workspace=ws.workspace, slug=services.OPTIN_TEMPLATE_SLUG).count() == 1


def test_double_opt_in_by_country_and_bad_or_old_links(ws, topics, frozen_clock):
    paris = person(ws, "p@acme.example", country="FR")
    berlin = person(ws, "b@acme.example", country="DE")
    assert services.subscription_set(contact=paris, topic="product-updates", granted=True, source="api").changed
    pending = services.subscription_set(contact=berlin, topic="product-updates", granted=True, source="api")
    assert pending.pending
    token = optin_confirm_url(pending.optin).rsplit("/", 1)[1]
    with pytest.raises(ServiceError, match="not valid"):
        services.optin_confirm(token=token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(ServiceError, match="not valid"):  # a token made for another purpose
        services.optin_confirm(token=token_make("preferences", {"w": ws.workspace.pk, "r": pending.optin.pk}))
    frozen_clock.advance(days=31)
    with pytest.raises(ServiceError, match="expired"):
        services.optin_confirm(token=token)
    assert not records(berlin, "product-updates")
    nobody = Contact.objects.create(workspace=ws.workspace, email="")
    with pytest.raises(ServiceError, match="no email address"):
        services.subscription_set(contact=nobody, topic="events", granted=True, source="api")


# --- the hosted form --------------------------------------------------------------------------------

def _form(ws, topic: str):
    return form_save(workspace=ws.workspace, slug="newsletter-signup", name="Newsletter sign-up",
                     fields=[{"name": "email", "type": "email", "required": True},
                             {"name": "country", "type": "country"}],
                     consent_text="Yes, send me product updates.", consent_topic=topic)


def _submit(client, ws, form, **fields):
    data = {"lf_aid": f"visitor-{fields['email']}", "lf_consent": "on", **fields}
    return client.post(f"/f/{ws.workspace.slug}/{form.slug}/", data, REMOTE_ADDR="198.51.100.7")


def test_a_hosted_form_on_a_double_opt_in_topic_requests_confirmation_instead(client, ws, topics, process):
    form = _form(ws, "product-updates")
    assert _submit(client, ws, form, email="max@beispiel.example", country="DE").status_code == 200
    assert _submit(client, ws, form, email="zoe@acme.example", country="FR").status_code == 200
    process()
    max_ = Contact.objects.get(workspace=ws.workspace, email="max@beispiel.example")
    zoe = Contact.objects.get(workspace=ws.workspace, email="zoe@acme.example")
    assert [r.status for r in records(zoe, "product-updates")] == ["granted"]  # no double opt-in in FR
    assert not records(max_, "product-updates")
    request = OptInRequest.objects.get(contact=max_)
    assert (request.topic, request.source, request.wording, request.ip) == (
        "product-updates", "form:newsletter-signup", "Yes, send me product updates.", "198.51.100.7")
    confirmation = Message.objects.get(pk=request.message_id)
    assert confirmation.kind == "transactional" and confirmation.to_email == "max@beispiel.example"
    marketing = mail(ws, max_, topic="product-updates")
    assert gate_check(message=marketing, now=dt.datetime.now(UTC)).action == "block"
    # Processing the same events again (a retried batch) sends no second email.
    services.form_consents_record(records=[ConsentRecord(
        workspace_id=ws.workspace.pk, contact=max_, topic="product-updates", status="granted",
        source="form:newsletter-signup", event_message_id=Event.objects.filter(
            workspace=ws.workspace, event="Form Submitted", contact=max_).values_list("message_id", flat=True)[0])])
    assert Message.objects.filter(kind="transactional").count() == 1
    # The person confirms on the page: now the consent exists, with the form's wording.
    page = Client(enforce_csrf_checks=True)
    link = path_of(optin_confirm_url(request))
    assert page.get(link).status_code == 200 and not records(max_, "product-updates")
    response = page.post(link)
    assert response.status_code == 200 and "you are subscribed" in response.content.decode()
    [record] = records(max_, "product-updates")
    assert (record.wording, record.source) == ("Yes, send me product updates.", "form:newsletter-signup")
    assert gate_check(message=marketing, now=dt.datetime.now(UTC)).action == "send"


# --- unsubscribe ----------------------------------------------------------------------------------

def test_unsubscribe_from_message_is_idempotent_and_records_the_event(ws, topics, frozen_clock):
    ada = person(ws)
    msg = mail(ws, ada, topic="newsletter")
    first = services.unsubscribe_from_message(message=msg, source="one_click", ip="192.0.2.8")
    assert (first.topic, first.status, first.source, first.ip) == ("newsletter", "withdrawn", "one_click", "192.0.2.8")
    assert msg.unsubscribed_at == frozen_clock.current
    frozen_clock.advance(minutes=5)
    assert services.unsubscribe_from_message(message=msg, source="one_click") == first
    assert len(records(ada)) == 1
    assert MessageEvent.objects.filter(message=msg, kind="unsubscribed").count() == 1
    assert Event.objects.filter(workspace=ws.workspace, event="Email Unsubscribed").count() == 1
    # A message without a topic unsubscribes from all marketing.
    everything = mail(ws, ada)
    assert services.unsubscribe_from_message(message=everything, source="one_click").topic == "marketing"
    # A message whose person is gone suppresses the address.
    gone = mail(ws, None, to="Gone@Acme.example")
    assert services.unsubscribe_from_message(message=gone, source="one_click") is None
    assert Suppression.objects.get(workspace=ws.workspace, email="gone@acme.example").reason == "manual"


def test_one_click_post_unsubscribes_at_once_without_cookie_or_csrf_token(ws, topics):
    ada = person(ws)
    msg = mail(ws, ada, topic="newsletter")
    client = Client(enforce_csrf_checks=True)
    response = client.post(path_of(unsubscribe_url(msg)), "List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded", HTTP_USER_AGENT="Gmail")
    assert response.status_code == 200
    [record] = records(ada)
    assert (record.topic, record.status, record.source, record.user_agent) == (
        "newsletter", "withdrawn", "one_click", "Gmail")
    assert client.post(path_of(unsubscribe_url(msg)), {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert len(records(ada)) == 1
    assert gate_check(message=mail(ws, ada, topic="newsletter"), now=dt.datetime.now(UTC)).action == "block"
    assert gate_check(message=mail(ws, ada, topic="offers"), now=dt.datetime.now(UTC)).action == "block"  # opt-in
    multipart = Client(enforce_csrf_checks=True).post(path_of(unsubscribe_url(mail(ws, ada))),
                                                      {"List-Unsubscribe": "One-Click"})
    assert multipart.status_code == 200 and records(ada, "marketing")[0].status == "withdrawn"


def test_get_and_head_never_unsubscribe_and_show_the_button_and_preferences(ws, topics):
    ada = person(ws)
    msg = mail(ws, ada, topic="newsletter")
    link = path_of(unsubscribe_url(msg))
    client = Client()
    page = client.get(link)
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="List-Unsubscribe" value="One-Click"' in html and "Newsletter" in html
    assert "Choose what you receive" in html and 'value="offers"' in html
    assert client.head(link).status_code == 200
    assert not ConsentRecord.objects.exists() and msg.events.count() == 0
    assert client.post(link, {"something": "else"}).status_code == 400
    assert not ConsentRecord.objects.exists()
    response = client.post(link, {"List-Unsubscribe": "One-Click", "via": "page"})
    assert "You are unsubscribed" in response.content.decode()
    assert records(ada)[0].source == "unsubscribe_page"


def test_a_test_sends_links_explain_and_change_nothing(ws, topics, frozen_clock):
    """QA bug: unsubscribing from a [Test] send suppressed the tester's address by hand ("the
    person's profile no longer exists"), which also stops their transactional mail, and the
    test's preferences link was the unsubscribe link."""
    from leadflow.consent.links import test_preferences_url
    from leadflow.messaging.rendering import TEST_CONTACT_KEY

    ada = person(ws)
    services.subscription_set(contact=ada, topic="newsletter", granted=False, source="api")
    services.subscription_set(contact=ada, topic="offers", granted=True, source="api")
    before = records(ada)
    test = Message.objects.create(workspace=ws.workspace, contact=None, kind="test", topic="newsletter",
                                  status="sent", to_email="qa@acme.example", context={TEST_CONTACT_KEY: ada.pk})
    link = path_of(unsubscribe_url(test))
    client = Client(enforce_csrf_checks=True)
    page = client.get(link)
    assert page.status_code == 200
    html = page.content.decode()
    assert "This was a test email" in html and "Nothing was changed" in html and "qa@acme.example" in html
    assert 'name="List-Unsubscribe"' not in html  # no button that would unsubscribe anyone
    one_click = client.post(link, "List-Unsubscribe=One-Click", content_type="application/x-www-form-urlencoded")
    via_page = client.post(link, {"List-Unsubscribe": "One-Click", "via": "page"})
    assert one_click.status_code == via_page.status_code == 200
    assert "Nothing was changed" in via_page.content.decode()
    assert services.unsubscribe_from_message(message=test, source="mailto") is None  # the mailto: path too
    test.refresh_from_db()
    assert test.unsubscribed_at is None and not test.events.exists()
    assert not Suppression.objects.filter(workspace=ws.workspace).exists()
    assert records(ada) == before
    assert not Event.objects.filter(workspace=ws.workspace, event="Email Unsubscribed").exists()
    # The preferences link: the preview contact's preference centre, read-only.
    preferences = path_of(test_preferences_url(test))
    assert preferences.startswith("/p/") and preferences != link
    shown = client.get(preferences)
    assert shown.status_code == 200
    html = shown.content.decode()
    assert "a test send" in html and f"(#{ada.pk})" in html and "read-only" in html
    assert "<fieldset disabled" in html
    assert 'value="offers" checked' in html and 'value="newsletter" checked' not in html  # Ada's own choices
    assert ada.email not in html  # the tester sees her choices, not her address
    forced = client.post(preferences, {"action": "unsubscribe_all"})
    assert forced.status_code == 200 and records(ada) == before
    # A test for the sample person shows a person with no choices yet (opt-out topics ticked).
    sample = Message.objects.create(workspace=ws.workspace, contact=None, kind="test", status="sent",
                                    to_email="qa@acme.example")
    html = client.get(path_of(test_preferences_url(sample))).content.decode()
    assert "no choices yet" in html and 'value="newsletter" checked' in html and 'value="offers" checked' not in html
    assert "all marketing email" in client.get(path_of(unsubscribe_url(sample))).content.decode()
    # A message id that is not a test send shows nothing.
    real = mail(ws, ada)
    assert client.get(path_of(test_preferences_url(real))).status_code == 404
    assert not Suppression.objects.exists() and records(ada) == before


def test_altered_foreign_and_stale_links_get_a_friendly_page(ws, other_ws, topics):
    ada = person(ws)
    msg = mail(ws, ada)
    link = path_of(unsubscribe_url(msg))
    client = Client()
    altered = client.get(link[:-3] + ("x" if link[-3] != "x" else "y") + link[-2:])
    assert altered.status_code == 400 and "This link does not work" in altered.content.decode()
    assert client.post(link[:-1] + ("Q" if link[-1] != "Q" else "R"), {"List-Unsubscribe": "One-Click"}).status_code == 400
    preference_token = path_of(preferences_url(workspace_id=ws.workspace.pk, contact_id=ada.pk)).rsplit("/", 1)[1]
    assert client.get(f"/u/{preference_token}").status_code == 400  # a preferences token is no unsubscribe token
    assert client.get("/u/garbage").status_code == 400
    foreign = token_make("unsubscribe", {"w": other_ws.workspace.pk, "m": msg.pk})
    assert client.get(f"/u/{foreign}").status_code == 404
    msg.delete()
    gone = client.post(link, {"List-Unsubscribe": "One-Click"})
    assert gone.status_code == 404 and "Nothing to change" in gone.content.decode()
    assert client.get("/p/garbage").status_code == 400 and client.get("/c/garbage").status_code == 400
    assert not ConsentRecord.objects.exists()


# --- the preference centre --------------------------------------------------------------------------

def test_preference_centre_shows_state_and_every_change_is_a_consent_record(ws, topics, frozen_clock):
    ada = person(ws, country="DE")
    services.subscription_set(contact=ada, topic="offers", granted=True, source="api")
    link = path_of(preferences_url(workspace_id=ws.workspace.pk, contact_id=ada.pk))
    client = Client(enforce_csrf_checks=True)
    html = client.get(link).content.decode()
    assert 'id="topic-newsletter" name="topics" value="newsletter" checked' in html  # opt-out
    assert 'id="topic-offers" name="topics" value="offers" checked' in html  # granted
    assert 'id="topic-events" name="topics" value="events">' in html  # double opt-in, not confirmed
    assert 'value="product-updates">' in html  # double opt-in in DE
    frozen_clock.advance(minutes=1)
    response = client.post(link, {"action": "save", "topics": ["offers", "events"]}, HTTP_USER_AGENT="Safari")
    assert response.status_code == 200 and "follow its link to confirm" in response.content.decode()
    assert [(r.topic, r.status) for r in records(ada) if r.source == "preference_centre"] == [("newsletter", "withdrawn")]
    assert records(ada, "newsletter")[0].user_agent == "Safari"
    assert OptInRequest.objects.filter(contact=ada, topic="events", confirmed_at__isnull=True).exists()
    assert "waiting for your confirmation" in response.content.decode()
    # Saving the same choices again changes nothing.
    before = ConsentRecord.objects.count()
    client.post(link, {"action": "save", "topics": ["offers", "events"]})
    assert ConsentRecord.objects.count() == before
    # Pause, then resume.
    client.post(link, {"action": "pause", "weeks": "4"})
    pause = MarketingPause.objects.get(contact=ada)
    assert pause.until == frozen_clock.current + dt.timedelta(weeks=4)
    decision = gate_check(message=mail(ws, ada, topic="offers"), now=frozen_clock.current)
    assert (decision.action, decision.until) == ("defer", pause.until)
    assert "paused until" in client.get(link).content.decode()
    assert client.post(link, {"action": "pause", "weeks": "99"}).status_code == 400
    client.post(link, {"action": "resume"})
    assert gate_check(message=mail(ws, ada, topic="offers"), now=frozen_clock.current).action == "send"
    # Unsubscribe from everything, then come back by ticking one topic.
    client.post(link, {"action": "unsubscribe_all"})
    assert records(ada, "marketing")[-1].status == "withdrawn"
    assert gate_check(message=mail(ws, ada, topic="offers"), now=frozen_clock.current).action == "block"
    html = client.get(link).content.decode()
    assert "unsubscribed from all marketing" in html and 'value="offers" checked' not in html
    frozen_clock.advance(minutes=1)
    client.post(link, {"action": "save", "topics": ["newsletter"]})
    assert records(ada, "marketing")[-1].status == "granted"
    assert gate_check(message=mail(ws, ada, topic="newsletter"), now=frozen_clock.current).action == "send"
    assert records(ada, "offers")[-1].status == "withdrawn"  # left unticked: it does not come back
    assert gate_check(message=mail(ws, ada, topic="offers"), now=frozen_clock.current).action == "block"
    assert client.post(link, {"action": "save", "topics": ["ghost"]}).status_code == 400
    assert client.post(link, {"action": "explode"}).status_code == 400


def test_preference_links_follow_merges_and_stay_in_their_workspace(ws, other_ws):
    from leadflow.contacts.services import contact_merge

    ada = person(ws)
    twin = person(ws, "ada.old@acme.example")
    link = path_of(preferences_url(workspace_id=ws.workspace.pk, contact_id=twin.pk))
    contact_merge(winner=ada, loser=twin, reason="test")
    client = Client()
    assert ada.email in client.get(link).content.decode()
    client.post(link, {"action": "unsubscribe_all"})
    assert records(ada, "marketing")[0].status == "withdrawn"
    foreign = token_make("preferences", {"w": other_ws.workspace.pk, "c": ada.pk})
    assert client.get(f"/p/{foreign}").status_code == 404


# --- suppressions -------------------------------------------------------------------------------------

def test_suppression_add_is_idempotent_lower_cased_and_upgrades_to_a_stronger_reason(ws):
    first = services.suppression_add(workspace_id=ws.workspace.pk, email=" Ada@Acme.example ", reason="soft_bounces",
                                     detail="3 soft bounces in 30 days", message_id=7)
    assert first.was_created and first.email == "ada@acme.example"
    again = services.suppression_add(workspace_id=ws.workspace.pk, email="ADA@acme.example", reason="manual")
    assert again.pk == first.pk and not again.was_created and again.reason == "manual"
    weaker = services.suppression_add(workspace_id=ws.workspace.pk, email="ada@acme.example", reason="soft_bounces")
    assert weaker.reason == "manual"
    services.suppression_add(workspace_id=ws.workspace.pk, email="ada@acme.example", reason="hard_bounce")
    assert Suppression.objects.get().reason == "hard_bounce"
    with pytest.raises(ServiceError, match="not an email address"):
        services.suppression_add(workspace_id=ws.workspace.pk, email="not-an-address", reason="manual")
    with pytest.raises(ServiceError, match="reason"):
        services.suppression_add(workspace_id=ws.workspace.pk, email="b@acme.example", reason="spite")
    lifted = services.suppression_lift(workspace_id=ws.workspace.pk, email="Ada@acme.example", actor="user:3")
    assert lifted.lifted_by == "user:3" and lifted.lifted_at is not None
    with pytest.raises(services.NotFound):
        services.suppression_lift(workspace_id=ws.workspace.pk, email="ada@acme.example", actor="user:3")
    renewed = services.suppression_add(workspace_id=ws.workspace.pk, email="ada@acme.example", reason="complaint")
    assert renewed.was_created and Suppression.objects.count() == 2  # the lifted row stays


def test_suppressions_import_reports_bad_rows_and_skips_what_is_there(ws):
    services.suppression_add(workspace_id=ws.workspace.pk, email="old@acme.example", reason="manual")
    csv = "Name,E-mail\nAda,ada@acme.example\nOld,OLD@acme.example\nBad,not-an-address\nAda again,Ada@Acme.example\nNone,\n"
    report = services.suppressions_import(workspace_id=ws.workspace.pk, actor="user:1", reason="complaint",
                                          file=SimpleUploadedFile("s.csv", csv.encode(), content_type="text/csv"))
    assert (report.rows, report.added, report.already) == (5, 1, 2)
    assert [r["row"] for r in report.invalid] == [4, 6]
    assert Suppression.objects.get(email="ada@acme.example").reason == "complaint"
    bare = services.suppressions_import(workspace_id=ws.workspace.pk, actor="user:1",
                                        file=io.BytesIO(b"x@acme.example\ny@acme.example\n"))
    assert (bare.rows, bare.added) == (2, 2)
    from leadflow.contacts.imports import ImportFileError

    with pytest.raises(ImportFileError, match="email column"):
        services.suppressions_import(workspace_id=ws.workspace.pk, actor="user:1", file=io.BytesIO(b"name,city\nA,B\n"))
    with pytest.raises(ImportFileError):
        services.suppressions_import(workspace_id=ws.workspace.pk, actor="user:1", file=io.BytesIO(b""))
