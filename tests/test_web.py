"""The marketer web UI through Django's test client: what a logged-in person sees and may do."""

from __future__ import annotations

import html
import importlib.util
import re

import pytest
from conftest import post_batch

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Contact, ContactMerge, Identity
from leadflow.core.models import ApiKey
from leadflow.core.services import api_key_authenticate, user_create
from leadflow.tracking.forms import form_save, magnet_save
from leadflow.tracking.models import Form, LeadMagnet

PAID_SOCIAL = {"source": "linkedin", "medium": "paid-social", "name": "q2-launch"}


def _user(keys, role="marketer", username=None):
    return user_create(username=username or f"{role}-{keys.workspace.slug}", password="pw-123456789",
                       workspace=keys.workspace, role=role)


@pytest.fixture
def marketer(ws):
    return _user(ws, "marketer")


@pytest.fixture
def ui(client, marketer):
    client.force_login(marketer)
    return client


def _ingest(client, keys, messages, process):
    response = post_batch(client, keys, messages)
    assert response.status_code == 200, response.content
    process()


def _visit(aid, *, campaign=None, url="https://acme.example/pricing", **extra):
    context = {"page": {"url": url, "referrer": "", "title": "Pricing"}}
    if campaign:
        context["campaign"] = campaign
    return {"type": "page", "anonymousId": aid, "name": "Pricing", "properties": {"url": url},
            "context": context, **extra}


def _identify(aid, email, **traits):
    return {"type": "identify", "anonymousId": aid, "traits": {"email": email, **traits}}


def _contact(keys, email) -> Contact:
    return Identity.objects.get(workspace=keys.workspace, kind="email", value=email).contact


def _fields_post(rows: list[dict], *, prefix="fields") -> dict:
    data = {f"{prefix}-TOTAL_FORMS": str(len(rows)), f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0", f"{prefix}-MAX_NUM_FORMS": "1000"}
    for i, row in enumerate(rows):
        for key, value in row.items():
            if value is True:
                data[f"{prefix}-{i}-{key}"] = "on"
            elif value is not False:
                data[f"{prefix}-{i}-{key}"] = value
    return data


# Access ----------------------------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/", "/contacts/", "/contacts/1/", "/companies/", "/forms/", "/forms/new/",
                                  "/magnets/", "/sources/", "/import/", "/settings/"])
def test_every_page_requires_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_login_logout_and_home(client, marketer):
    page = client.get("/login/")
    assert page.status_code == 200 and b'name="password"' in page.content
    bad = client.post("/login/", {"username": marketer.username, "password": "wrong"})
    assert b"did not match" in bad.content
    response = client.post("/login/", {"username": marketer.username, "password": "pw-123456789"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/")["Location"] == "/contacts/"
    contacts = client.get("/contacts/")
    assert contacts.status_code == 200 and b"Contacts" in contacts.content
    assert client.get("/logout/").status_code == 405  # logging out changes state: POST only
    assert client.post("/logout/").status_code == 302
    assert client.get("/contacts/").status_code == 302


def test_user_without_workspace_gets_a_clear_message(client, db):
    lonely = user_create(username="lonely", password="pw-123456789")
    client.force_login(lonely)
    response = client.get("/contacts/")
    assert response.status_code == 403
    assert b"not a member of any workspace" in response.content


def test_workspace_isolation(client, ws, other_ws, ui, process):
    _ingest(client, ws, [_identify("a-1", "ann@acme.example", first_name="Ann")], process)
    _ingest(client, other_ws, [_identify("b-1", "bob@other.example", first_name="Bob")], process)
    theirs = _contact(other_ws, "bob@other.example")
    magnet = magnet_save(workspace=other_ws.workspace, slug="", name="Their ebook", kind="ebook",
                         delivery_url="https://other.example/e.pdf")
    their_form = form_save(workspace=other_ws.workspace, slug="theirs", name="Theirs",
                           fields=[{"name": "email", "type": "email"}])
    their_key = ApiKey.objects.filter(workspace=other_ws.workspace).first()

    listing = ui.get("/contacts/").content.decode()
    assert "ann@acme.example" in listing and "bob@other.example" not in listing
    assert ui.get(f"/contacts/{theirs.pk}/").status_code == 404
    assert ui.get("/contacts/", {"q": "bob"}).content.decode().count("bob@other.example") == 0
    assert ui.get(f"/forms/{their_form.pk}/").status_code == 404
    assert ui.get(f"/forms/{their_form.pk}/edit/").status_code == 404
    assert ui.get(f"/magnets/{magnet.pk}/edit/").status_code == 404
    assert "Their ebook" not in ui.get("/magnets/").content.decode()
    assert ui.post("/settings/", {"action": "revoke", "key_id": their_key.pk}).status_code == 404
    their_key.refresh_from_db()
    assert their_key.revoked_at is None
    # Choosing a workspace one is not a member of is refused; the session keeps the old one.
    assert ui.post("/workspace/", {"workspace_id": other_ws.workspace.pk}).status_code == 404
    assert "ann@acme.example" in ui.get("/contacts/").content.decode()


def test_workspace_switcher(client, ws, other_ws, marketer, process):
    from leadflow.core.services import membership_set

    membership_set(workspace=other_ws.workspace, user=marketer, role="analyst")
    _ingest(client, ws, [_identify("a-1", "ann@acme.example")], process)
    _ingest(client, other_ws, [_identify("b-1", "bob@other.example")], process)
    client.force_login(marketer)
    first = client.get("/contacts/").content.decode()
    assert 'name="workspace_id"' in first and "Other Company" in first
    # Workspaces are ordered by name: "Acme Marketing" first.
    assert "ann@acme.example" in first and "bob@other.example" not in first
    response = client.post("/workspace/", {"workspace_id": other_ws.workspace.pk, "next": "/sources/"})
    assert response.status_code == 302 and response["Location"] == "/sources/"
    switched = client.get("/contacts/").content.decode()
    assert "bob@other.example" in switched and "ann@acme.example" not in switched
    # The role is per workspace: an analyst there may not create forms.
    assert client.get("/forms/new/").status_code == 403
    assert client.post("/workspace/", {"workspace_id": ws.workspace.pk,
                                       "next": "https://evil.example/"})["Location"] == "/contacts/"


# Contacts --------------------------------------------------------------------------------------

def test_contact_search_and_list(client, ws, ui, process):
    _ingest(client, ws, [
        _identify("a-1", "ann@acme.example", first_name="Ann", last_name="Archer", company="Globex"),
        _visit("a-2", campaign=PAID_SOCIAL),
        _identify("a-2", "zed@zeta.example", first_name="Zed"),
    ], process)
    everything = ui.get("/contacts/").content.decode()
    assert "Ann Archer" in everything and "Zed" in everything and "2 contacts" in everything
    assert "Globex" in everything and "Paid social" in everything
    found = ui.get("/contacts/", {"q": "archer"}).content.decode()
    assert "Ann Archer" in found and "zed@zeta.example" not in found and "1 contact " in found
    by_company = ui.get("/contacts/", {"q": "globex"}).content.decode()
    assert "Ann Archer" in by_company and "Zed" not in by_company
    by_anon = ui.get("/contacts/", {"q": "a-2"}).content.decode()
    assert "Zed" in by_anon and "Ann Archer" not in by_anon
    nothing = ui.get("/contacts/", {"q": "nobody-like-this"}).content.decode()
    assert "No contact matches" in nothing


def test_contacts_list_paginates_without_n_plus_one(client, ws, ui, process, django_assert_max_num_queries):
    _ingest(client, ws, [_identify(f"a-{i}", f"p{i:03d}@acme.example", company=f"Co {i % 7}")
                         for i in range(60)], process)
    with django_assert_max_num_queries(12):
        first = ui.get("/contacts/").content.decode()
    profile_link = re.compile(r'href="/contacts/\d+/"')
    assert len(profile_link.findall(first)) == 50
    newest = Contact.objects.filter(workspace=ws.workspace).order_by("-id")
    assert f'href="/contacts/{newest[0].pk}/"' in first
    assert f'href="/contacts/{newest[59].pk}/"' not in first
    second = ui.get("/contacts/", {"page": 2}).content.decode()
    assert len(profile_link.findall(second)) == 10 and f'href="/contacts/{newest[59].pk}/"' in second
    with django_assert_max_num_queries(12):
        companies = ui.get("/companies/").content.decode()
    assert re.search(r"Co 3</strong></td><td>—</td><td class=\"num\">9<", companies)


def test_profile_shows_source_traits_and_timeline(client, ws, ui, process):
    _ingest(client, ws, [
        _visit("v-1", campaign=PAID_SOCIAL, url="https://acme.example/pricing?utm_source=linkedin"),
        _identify("v-1", "Carla@Acme.example", first_name="Carla", plan="pro", company="Initech"),
        {"type": "track", "anonymousId": "v-1", "event": "Demo Requested",
         "properties": {"size": "50-200", "nested": {"x": 1}}},
    ], process)
    contact = _contact(ws, "carla@acme.example")
    page = ui.get(f"/contacts/{contact.pk}/").content.decode()
    # Source: channel label and the raw values.
    assert "Paid social" in page and "q2-launch" in page and "linkedin" in page and "paid-social" in page
    assert "https://acme.example/pricing?utm_source=linkedin" in page
    # Identities, traits, company.
    assert "carla@acme.example" in page and "v-1" in page
    assert "plan" in page and "pro" in page and "Initech" in page
    # Timeline: newest first, with the event name and its properties.
    assert "Demo Requested" in page and "50-200" in page
    assert f"{contact.events.count()} events" in page
    assert page.index("Demo Requested") < page.index("Pricing</strong>")


def test_merged_contact_id_redirects_to_the_survivor(client, ws, ui, process):
    _ingest(client, ws, [_visit("laptop")], process)
    _ingest(client, ws, [_visit("phone")], process)
    _ingest(client, ws, [_identify("laptop", "dee@acme.example")], process)
    _ingest(client, ws, [_identify("phone", "dee@acme.example")], process)
    merge = ContactMerge.objects.get(workspace=ws.workspace)
    response = ui.get(f"/contacts/{merge.loser_id}/")
    assert response.status_code == 302
    assert response["Location"] == f"/contacts/{merge.winner_id}/"
    profile = ui.get(response["Location"]).content.decode()
    assert f"#{merge.loser_id}" in profile and merge.reason in profile
    assert "laptop" in profile and "phone" in profile
    assert ui.get("/contacts/999999/").status_code == 404


# Forms and lead magnets ------------------------------------------------------------------------

def test_form_created_with_the_fields_editor_then_hosted_form_works(client, ws, marketer, process):
    client.force_login(marketer)
    response = client.post("/magnets/new/", {"name": "Nurture Playbook", "slug": "", "kind": "ebook",
                                             "delivery_url": "https://acme.example/playbook.pdf"})
    assert response.status_code == 302
    magnet = LeadMagnet.objects.get(workspace=ws.workspace, slug="nurture-playbook")

    new = client.get("/forms/new/").content.decode()
    assert 'name="fields-0-label"' in new and 'value="email"' in new  # a usable default

    rows = [
        {"label": "Work email", "name": "email", "type": "email", "required": True},
        {"label": "Company name", "name": "", "type": "text", "required": False},
        {"label": "Team size", "name": "team_size", "type": "select", "options": "1-10, 11-50, 51+"},
        {"label": "", "name": "", "type": "text"},  # an unused extra row
    ]
    data = {"name": "Playbook download", "slug": "playbook", "submit_label": "Send it",
            "consent_text": "Yes, send me marketing emails about LeadFlow.", "consent_required": "on",
            "consent_topic": "newsletter", "lead_magnet": str(magnet.pk),
            "success_message": "Check your inbox!", "redirect_url": "", **_fields_post(rows)}
    response = client.post("/forms/new/", data)
    assert response.status_code == 302, response.content.decode()
    form = Form.objects.get(workspace=ws.workspace, slug="playbook")
    assert response["Location"] == f"/forms/{form.pk}/"
    assert [f["name"] for f in form.fields] == ["email", "company_name", "team_size"]
    assert form.fields[2]["options"] == ["1-10", "11-50", "51+"]
    assert form.consent_required and form.consent_topic == "newsletter" and form.lead_magnet == magnet

    detail = client.get(f"/forms/{form.pk}/").content.decode()
    hosted = f"http://testserver/f/{ws.workspace.slug}/playbook/"
    assert hosted in detail
    assert f'data-leadflow-form="{ws.workspace.slug}/playbook"' in html.unescape(detail)
    assert 'data-copy="#embed-snippet"' in detail
    assert re.search(r'data-testid="submission-count">0<', detail)

    public = client.get(hosted)
    assert public.status_code == 200 and "Team size" in public.content.decode()
    refused = client.post(hosted, {"email": "erin@acme.example", "lf_aid": "erin-aid"})
    assert refused.status_code == 400  # consent is required
    submitted = client.post(hosted, {"email": "erin@acme.example", "company_name": "Hooli",
                                     "team_size": "11-50", "lf_consent": "on", "lf_aid": "erin-aid"})
    assert submitted.status_code == 200
    assert "Check your inbox!" in submitted.content.decode() and "Nurture Playbook" in submitted.content.decode()

    assert re.search(r'data-testid="submission-count">1<', client.get(f"/forms/{form.pk}/").content.decode())
    assert re.search(r'<td class="num">1</td>', client.get("/forms/").content.decode())
    magnets = client.get("/magnets/").content.decode()
    # Submissions, delivery emails (off: the box was not ticked), downloads.
    assert re.search(r'Nurture Playbook.*?<td class="num">1</td>\s*<td class="num"><span[^>]*>off</span></td>\s*'
                     r'<td class="num">0</td>', magnets, re.DOTALL)

    process()
    contact = _contact(ws, "erin@acme.example")
    consent = ConsentRecord.objects.get(contact=contact)
    assert consent.topic == "newsletter" and consent.status == "granted"
    profile = client.get(f"/contacts/{contact.pk}/").content.decode()
    assert "Yes, send me marketing emails about LeadFlow." in profile and "Form Submitted" in profile
    assert "Hooli" in profile and "form:playbook" in profile


def test_form_edit_keeps_fields_and_reports_service_errors(client, ws, ui):
    form = form_save(workspace=ws.workspace, slug="contact-us", name="Contact us",
                     fields=[{"name": "email", "type": "email", "required": True, "label": "Email"},
                             {"name": "message", "type": "textarea", "label": "Message"}])
    edit = ui.get(f"/forms/{form.pk}/edit/").content.decode()
    assert 'value="message"' in edit and 'value="Contact us"' in edit

    rows = [{"label": "Email", "name": "email", "type": "email", "required": True},
            {"label": "Message", "name": "message", "type": "textarea", "DELETE": True},
            {"label": "Phone", "name": "phone", "type": "tel"}]
    base = {"name": "Contact us", "slug": "contact-us", "submit_label": "Send", "consent_topic": "marketing",
            "success_message": "Thanks", "redirect_url": "https://acme.example/thanks"}
    assert ui.post(f"/forms/{form.pk}/edit/", {**base, **_fields_post(rows)}).status_code == 302
    form.refresh_from_db()
    assert [f["name"] for f in form.fields] == ["email", "phone"]
    assert form.redirect_url == "https://acme.example/thanks" and form.submit_label == "Send"

    # The service's own message reaches the marketer, and nothing changes.
    no_email = [{"label": "Name", "name": "name", "type": "text"}]
    page = ui.post(f"/forms/{form.pk}/edit/", {**base, **_fields_post(no_email)})
    assert page.status_code == 200
    assert "a form needs an email field named &#x27;email&#x27;" in page.content.decode()
    form_save(workspace=ws.workspace, slug="taken", name="Taken", fields=[{"name": "email", "type": "email"}])
    clash = ui.post(f"/forms/{form.pk}/edit/", {**base, "slug": "taken", **_fields_post(rows)})
    assert "already exists" in clash.content.decode()
    form.refresh_from_db()
    assert form.slug == "contact-us" and [f["name"] for f in form.fields] == ["email", "phone"]


def test_magnet_edit_and_error(client, ws, ui):
    bad = ui.post("/magnets/new/", {"name": "Webinar", "kind": "webinar", "delivery_url": "not a url"})
    assert bad.status_code == 200 and "is not an http(s) URL" in bad.content.decode()
    assert not LeadMagnet.objects.exists()
    ui.post("/magnets/new/", {"name": "Webinar", "kind": "webinar", "delivery_url": "https://acme.example/w"})
    magnet = LeadMagnet.objects.get(workspace=ws.workspace)
    response = ui.post(f"/magnets/{magnet.pk}/edit/", {"name": "Spring webinar", "slug": "webinar",
                                                      "kind": "webinar", "delivery_url": "https://acme.example/w2"})
    assert response.status_code == 302
    magnet.refresh_from_db()
    assert magnet.name == "Spring webinar" and magnet.delivery_url == "https://acme.example/w2"
    assert "Spring webinar" in ui.get("/magnets/").content.decode()


@pytest.mark.parametrize("role", ["analyst", "sales", "compliance"])
def test_viewers_may_look_but_not_create(client, ws, role):
    viewer = _user(ws, role)
    client.force_login(viewer)
    form = form_save(workspace=ws.workspace, slug="demo", name="Demo", fields=[{"name": "email", "type": "email"}])
    assert client.get("/forms/").status_code == 200
    assert "New form" not in client.get("/forms/").content.decode()
    assert client.get(f"/forms/{form.pk}/").status_code == 200
    assert client.get("/forms/new/").status_code == 403
    rows = [{"label": "Email", "name": "email", "type": "email", "required": True}]
    response = client.post("/forms/new/", {"name": "Sneaky", "slug": "sneaky", "submit_label": "Go",
                                           **_fields_post(rows)})
    assert response.status_code == 403 and b"admin" in response.content
    assert not Form.objects.filter(slug="sneaky").exists()
    assert client.get(f"/forms/{form.pk}/edit/").status_code == 403
    assert client.post("/magnets/new/", {"name": "x", "kind": "ebook",
                                         "delivery_url": "https://x.example"}).status_code == 403
    assert client.post("/settings/", {"action": "create", "kind": "secret"}).status_code == 403
    assert ApiKey.objects.filter(workspace=ws.workspace).count() == 2
    assert client.get("/settings/").status_code == 200
    assert client.get("/import/").status_code == 403


# Sources ---------------------------------------------------------------------------------------

def test_sources_page_groups_channels_and_campaigns(client, ws, ui, process):
    messages = [_visit(f"s-{i}", campaign=PAID_SOCIAL) for i in range(3)]
    messages += [_visit("n-1", campaign={"source": "newsletter", "medium": "email", "name": "may"})]
    messages += [_visit("d-1")]
    _ingest(client, ws, messages, process)
    page = ui.get("/sources/").content.decode()
    assert re.search(r"<td>Paid social</td><td class=\"num\">3</td>", page)
    assert re.search(r"<td>Email</td><td class=\"num\">1</td>", page)
    assert re.search(r"<td>linkedin</td><td>paid-social</td><td>q2-launch</td><td class=\"num\">3</td>", page)
    assert re.search(r"<td>newsletter</td><td>email</td><td>may</td><td class=\"num\">1</td>", page)
    assert "5 contacts in all" in page


# Settings: keys --------------------------------------------------------------------------------

def test_key_create_is_shown_once_and_revoke_works(client, ws, ui):
    response = ui.post("/settings/", {"action": "create", "kind": "secret", "name": "CRM sync"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    raw = re.search(r'id="raw-key"[^>]*>(lfs_[\w-]+)<', response.content.decode()).group(1)
    key = api_key_authenticate(raw=raw, kind="secret")
    assert key is not None and key.workspace == ws.workspace and key.name == "CRM sync"
    again = ui.get("/settings/").content.decode()
    assert raw not in again and key.prefix in again and "CRM sync" in again

    response = ui.post("/settings/", {"action": "revoke", "key_id": key.pk})
    assert response.status_code == 302
    assert api_key_authenticate(raw=raw, kind="secret") is None
    assert "Revoked" in ui.get("/settings/").content.decode()


def test_site_write_key_fills_the_tracking_snippet_once(client, ws, ui):
    plain = html.unescape(ui.get("/settings/").content.decode())
    assert 'data-write-key="YOUR_WRITE_KEY"' in plain and "http://testserver/t/lf.js" in plain
    assert "shown only once" in plain
    page = ui.post("/settings/", {"action": "site-key"}).content.decode()
    raw = re.search(r'data-write-key="(lfw_[\w-]+)"', html.unescape(page)).group(1)
    assert api_key_authenticate(raw=raw, kind="write").workspace == ws.workspace
    assert raw not in ui.get("/settings/").content.decode()


# Import ----------------------------------------------------------------------------------------

def test_import_page_reports_rows(client, ws, ui, process):
    if importlib.util.find_spec("leadflow.contacts.imports") is None:
        pytest.skip("leadflow.contacts.imports is not written yet")
    from django.core.files.uploadedfile import SimpleUploadedFile

    csv = (b"email,first_name,company\n"
           b"fay@acme.example,Fay,Globex\n"
           b"not-an-email,Broken,\n"
           b"gus@acme.example,Gus,\n")
    upload = SimpleUploadedFile("leads.csv", csv, content_type="text/csv")
    response = ui.post("/import/", {"file": upload, "source_label": "Berlin fair"})
    assert response.status_code == 200
    page = response.content.decode()
    assert re.search(r'data-testid="imported">2<', page)
    assert re.search(r'data-testid="rejected">1<', page)
    assert re.search(r'<td class="num">3</td><td>[^<]+</td>', page)  # line 3 of the file
    process()
    listing = ui.get("/contacts/").content.decode()
    assert "fay@acme.example" in listing and "gus@acme.example" in listing and "Import" in listing
    assert "Broken" not in listing

    again = ui.post("/import/", {"file": SimpleUploadedFile("leads.csv", csv, content_type="text/csv")})
    assert re.search(r'data-testid="imported">0<', again.content.decode())

    no_identity = SimpleUploadedFile("bad.csv", b"first_name,city\nHal,Oslo\n", content_type="text/csv")
    refused = ui.post("/import/", {"file": no_identity})
    assert refused.status_code == 200 and 'class="error"' in refused.content.decode()
    assert 'id="import-report"' not in refused.content.decode()
