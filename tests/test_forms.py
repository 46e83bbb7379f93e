"""Hosted forms and lead magnets: submission, identity linking, consent, spam protection, delivery."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import override_settings

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError
from leadflow.tracking.forms import form_save, magnet_save
from leadflow.tracking.models import Event

from conftest import post_batch

FIELDS = [
    {"name": "email", "label": "Work email", "type": "email", "required": True},
    {"name": "first_name", "label": "First name", "type": "text", "required": True},
    {"name": "company", "label": "Company", "type": "text"},
    {"name": "country", "label": "Country", "type": "country"},
    {"name": "phone", "label": "Phone", "type": "tel"},
    {"name": "role", "label": "Role", "type": "select", "options": ["Marketing", "Sales", "IT"]},
]


@pytest.fixture
def guide_form(ws):
    magnet = magnet_save(workspace=ws.workspace, slug="retirement-guide", name="Retirement guide",
                         kind="ebook", delivery_url="https://cdn.example.com/retirement.pdf")
    return form_save(workspace=ws.workspace, slug="guide", name="Get the guide", fields=FIELDS,
                     consent_text="Yes, send me LeadFlow Bank's newsletter. I can unsubscribe any time.",
                     consent_topic="newsletter", lead_magnet=magnet.slug, success_message="Enjoy the guide")


def url(ws, form, **query):
    base = f"/f/{ws.workspace.slug}/{form.slug}/"
    return base + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def submit(client, ws, form, **fields):
    data = {"email": "rui@example.com", "first_name": "rui", "company": " Banco  Rui ", "country": "PT",
            "phone": "912345678", "role": "IT", "lf_consent": "on", "lf_aid": "visitor-1",
            "lf_page": "https://bank.example/guides?utm_source=facebook", "lf_referrer": "https://facebook.com/",
            "utm_source": "facebook", "utm_medium": "paid-social", "utm_campaign": "pension-q2"}
    data.update(fields)
    return client.post(url(ws, form), {k: v for k, v in data.items() if v is not None},
                       REMOTE_ADDR="198.51.100.7", HTTP_USER_AGENT="Mozilla/5.0 (Linux)")


def test_form_page_renders_fields_consent_and_honeypot(client, ws, guide_form):
    resp = client.get(url(ws, guide_form, aid="visitor-1", utm_source="facebook"))
    html = resp.content.decode()
    assert resp.status_code == 200
    for label in ("Work email", "First name", "Country", "Role"):
        assert label in html
    assert "I can unsubscribe any time." in html
    assert 'name="lf_hp_url"' in html
    assert 'value="visitor-1"' in html and 'value="facebook"' in html
    assert resp.cookies["lf_aid"].value == "visitor-1"


def test_submission_links_visitor_history_records_consent_and_source(client, ws, guide_form, process):
    # The visitor browsed anonymously before submitting.
    post_batch(client, ws, [{"type": "page", "anonymousId": "visitor-1", "name": "Guides",
                             "context": {"page": {"url": "https://bank.example/guides"}}}])
    resp = submit(client, ws, guide_form)
    assert resp.status_code == 200
    assert "Enjoy the guide" in resp.content.decode() and "/m/" in resp.content.decode()
    process()
    contact = Contact.objects.get(workspace=ws.workspace)
    assert contact.email == "rui@example.com" and contact.first_name == "Rui"
    assert contact.phone == "+351912345678" and contact.country == "PT"
    assert contact.company.name == "Banco Rui"
    assert contact.traits["role"] == "IT"
    assert sorted(contact.events.exclude(event="Lifecycle Stage Changed").values_list("type", flat=True)) == ["identify", "page", "track"]
    submitted = contact.events.get(event="Form Submitted")
    assert submitted.properties["form_slug"] == "guide"
    assert submitted.properties["magnet_slug"] == "retirement-guide"
    assert submitted.context["campaign"] == {"source": "facebook", "medium": "paid-social", "name": "pension-q2"}
    consent = ConsentRecord.objects.get(contact=contact)
    assert consent.status == "granted" and consent.topic == "newsletter"
    assert consent.wording == guide_form.consent_text
    assert consent.ip == "198.51.100.7" and consent.source == "form:guide"
    assert contact.latest_touch["channel"] == "paid_social"
    assert contact.latest_touch["form"] == "guide"


def test_unticked_consent_is_recorded_as_not_given(client, ws, guide_form, process):
    assert submit(client, ws, guide_form, lf_consent=None).status_code == 200
    process()
    assert ConsentRecord.objects.get().status == "withdrawn"


def test_an_unticked_box_later_does_not_take_back_a_consent_given(client, ws, guide_form, process):
    """Withdrawing takes the unsubscribe link or the preference centre: a subscriber who fills in
    a form again without ticking the box, or a forged `Form Submitted` sent with the public write
    key, leaves the consent where it was."""
    assert submit(client, ws, guide_form).status_code == 200
    process()
    assert submit(client, ws, guide_form, lf_consent=None).status_code == 200
    post_batch(client, ws, [{"type": "track", "event": "Form Submitted", "anonymousId": "forger",
                             "properties": {"form_slug": "guide", "consent": {"topic": "newsletter", "granted": False,
                                                                              "wording": "no"}},
                             "context": {"traits": {"email": "rui@example.com"}}}])
    process()
    contact = Contact.objects.get(workspace=ws.workspace, email="rui@example.com")
    assert list(ConsentRecord.objects.filter(contact=contact).values_list("status", flat=True)) == ["granted"]


def test_required_consent_blocks_submission(client, ws, guide_form):
    guide_form.consent_required = True
    guide_form.save()
    resp = submit(client, ws, guide_form, lf_consent=None)
    assert resp.status_code == 400 and "This field is required" in resp.content.decode()
    assert not Event.objects.exists()


def test_bad_submission_rerenders_with_errors_and_values(client, ws, guide_form):
    resp = submit(client, ws, guide_form, email="not-an-email", phone="12")
    html = resp.content.decode()
    assert resp.status_code == 400
    assert "Enter a valid email address" in html
    assert "invalid phone number" in html
    assert 'value="rui"' in html, "what the person typed is kept"
    assert not Event.objects.exists()


def test_honeypot_looks_successful_but_stores_nothing(client, ws, guide_form):
    resp = submit(client, ws, guide_form, lf_hp_url="http://spam.example")
    assert resp.status_code == 200 and "Enjoy the guide" in resp.content.decode()
    assert not Event.objects.exists()


def test_per_ip_rate_limit(client, ws, guide_form, frozen_clock):
    with override_settings(LEADFLOW_FORM_RATE_LIMIT=2, LEADFLOW_FORM_RATE_WINDOW=600):
        assert submit(client, ws, guide_form).status_code == 200
        assert submit(client, ws, guide_form, email="b@example.com").status_code == 200
        blocked = submit(client, ws, guide_form, email="c@example.com")
        assert blocked.status_code == 429 and "Too many submissions" in blocked.content.decode()
        frozen_clock.advance(minutes=11)
        assert submit(client, ws, guide_form, email="d@example.com").status_code == 200
    emails = {e.traits.get("email") for e in Event.objects.filter(type="identify")}
    assert emails == {"rui@example.com", "b@example.com", "d@example.com"}


def test_magnet_download_records_event_and_redirects(client, ws, guide_form, process):
    resp = submit(client, ws, guide_form)
    html = resp.content.decode()
    start = html.index("/m/")
    link = html[start:html.index('"', start)]
    assert client.head(link).status_code == 200  # a link scanner's probe
    assert not Event.objects.filter(event="Asset Downloaded").exists()
    download = client.get(link)
    assert download.status_code == 302 and download["Location"] == "https://cdn.example.com/retirement.pdf"
    process()
    contact = Contact.objects.get()
    downloaded = contact.events.get(event="Asset Downloaded")
    assert downloaded.properties["magnet_slug"] == "retirement-guide"
    assert downloaded.properties["magnet_kind"] == "ebook"
    assert client.get(link[:-3] + "xyz").status_code == 404


def test_unknown_or_archived_form_is_404(client, ws, guide_form):
    assert client.get(f"/f/{ws.workspace.slug}/nope/").status_code == 404
    guide_form.archived_at = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    guide_form.save()
    assert client.get(url(ws, guide_form)).status_code == 404


def test_form_in_another_workspace_is_not_reachable(client, ws, other_ws, guide_form):
    assert client.get(f"/f/{other_ws.workspace.slug}/{guide_form.slug}/").status_code == 404


@pytest.mark.parametrize("fields,message", [
    ([], "needs a list of fields"),
    ([{"name": "first_name", "type": "text"}], "email field named 'email'"),
    ([{"name": "email", "type": "email"}, {"name": "email", "type": "text"}], "used twice"),
    ([{"name": "email", "type": "email"}, {"name": "Bad Name", "type": "text"}], "must be lower-case"),
    ([{"name": "email", "type": "email"}, {"name": "size", "type": "select"}], "needs a list of text options"),
    ([{"name": "email", "type": "email"}, {"name": "x", "type": "rocket"}], "type must be one of"),
])
def test_form_definitions_are_validated(ws, fields, message):
    with pytest.raises(ServiceError, match=message):
        form_save(workspace=ws.workspace, slug="f", name="F", fields=fields)


def test_magnet_validation(ws):
    with pytest.raises(ServiceError, match="not an http"):
        magnet_save(workspace=ws.workspace, slug="m", name="M", kind="ebook", delivery_url="ftp://x")
    with pytest.raises(ServiceError, match="kind must be"):
        magnet_save(workspace=ws.workspace, slug="m", name="M", kind="podcast", delivery_url="https://x.example")


def test_tracking_script_is_served(client):
    resp = client.get("/t/lf.js")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("application/javascript")
    body = resp.content.decode()
    assert "data-leadflow-form" in body and "/v1/" in body and "lf_aid" in body
