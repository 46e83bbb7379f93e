"""Email content pages: the templates list, the editor and its live preview, versions and diff,
a version's page (submit, approve, reject, test send), the approval queue with its role checks,
layouts, the navigation, and workspace isolation."""

from __future__ import annotations

import html

import orjson
import pytest
from django.template import Context, Template as DjangoTemplate
from django.test import Client

from leadflow.contacts.models import Contact
from leadflow.core.services import user_create
from leadflow.messaging import content
from leadflow.messaging.models import Layout, Message, MessagingSettings, Template, TemplateVersion

pytestmark = pytest.mark.django_db

LAYOUT = '{{ content }}<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def login(ws, username: str, role: str) -> Client:
    c = Client()
    c.force_login(user_create(username=username, password="pw-123456", email=f"{username}@acme.example",
                              workspace=ws.workspace, role=role))
    return c


@pytest.fixture
def marketer(ws):
    return login(ws, "mara", "marketer")


@pytest.fixture
def postal(ws):
    return MessagingSettings.objects.create(workspace=ws.workspace, postal_address="Acme Inc, 1 Main St")


@pytest.fixture
def layout(ws):
    return content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")


def form(layout=None, **overrides) -> dict:
    data = {"name": "Welcome", "kind": "marketing", "topic": "", "subject": "Hi {{ contact.first_name }}",
            "preheader": "Welcome aboard", "html": "<p>Hello {{ contact.first_name }}</p>", "text": "",
            "layout_id": str(layout.pk) if layout else "", "blocks": "{}", "note": ""}
    data.update(overrides)
    return data


def test_nav_and_subnav(ws, marketer):
    page = marketer.get("/email/").content.decode()
    assert 'href="/email/" aria-current="page">Email</a>' in page
    assert 'href="/email/layouts/"' in page and 'href="/email/approvals/"' in page
    # a link to a page that does not exist yet is left out rather than breaking the page
    rendered = DjangoTemplate('{% load email_tags %}[{% email_url "web:email-no-such-page" %}]'
                              '[{% email_url "web:email-layouts" %}]').render(Context({}))
    assert rendered == "[][/email/layouts/]"


def test_create_edit_and_live_preview(ws, marketer, layout, postal):
    page = marketer.get("/email/templates/new/")
    assert page.status_code == 200 and "email-editor.js" in page.content.decode()
    assert 'id="email-options"' in page.content.decode() and 'data-testid="blocks-editor"' in page.content.decode()
    resp = marketer.post("/email/templates/new/", form(layout))
    template = Template.objects.get(workspace=ws.workspace, name="Welcome")
    assert resp.status_code == 302 and resp["Location"] == f"/email/templates/{template.pk}/"
    editor = marketer.get(f"/email/templates/{template.pk}/").content.decode()
    assert "Editing version 1, a draft" in editor and "Hello {{ contact.first_name }}" in editor

    # the live preview renders the unsaved form for the sample person, a sample stage, or a contact
    blocks = {"cta": {"by": "stage", "variants": [{"when": "customer", "html": "<b>Upgrade</b>"}],
                      "default": {"html": "<b>Try it</b>"}}}
    unsaved = form(layout, html='<p>Hi {{ contact.first_name }} {{ block("cta") }}</p>', blocks=orjson.dumps(blocks).decode())
    r = marketer.post(f"/email/templates/{template.pk}/preview/", unsaved)
    assert r.status_code == 200, r.content
    assert "Hi Ada <b>Try it</b>" in r.json()["html"] and r.json()["subject"] == "Hi Ada"
    assert r.json()["preheader"] == "Welcome aboard" and "Acme Inc, 1 Main St" in r.json()["text"]
    r = marketer.post(f"/email/templates/{template.pk}/preview/", {**unsaved, "stage": "customer"})
    assert "<b>Upgrade</b>" in r.json()["html"]
    grace = Contact.objects.create(workspace=ws.workspace, email="grace@acme.example", first_name="Grace",
                                   lifecycle_stage="customer")
    r = marketer.post(f"/email/templates/{template.pk}/preview/", {**unsaved, "contact_id": str(grace.pk)})
    assert "Hi Grace <b>Upgrade</b>" in r.json()["html"] and r.json()["contact"] == "grace@acme.example"
    r = marketer.post(f"/email/templates/{template.pk}/preview/", {**unsaved, "html": "<p>{% if %}</p>"})
    assert r.status_code == 400 and r.json()["error"].startswith("html, line 1:")
    r = marketer.post("/email/templates/preview/", unsaved)  # a template not created yet
    assert r.status_code == 200 and "Hi Ada" in r.json()["html"]
    found = marketer.get("/email/templates/contacts/?q=grace").json()["items"]
    assert found == [{"id": grace.pk, "label": f"grace@acme.example — Grace (#{grace.pk})"}]

    # saving edits the draft in place; nothing was saved by the previews
    assert TemplateVersion.objects.get(template=template).html == "<p>Hello {{ contact.first_name }}</p>"
    resp = marketer.post(f"/email/templates/{template.pk}/", unsaved)
    assert resp.status_code == 302
    v1 = TemplateVersion.objects.get(template=template)
    assert v1.blocks["cta"]["variants"] == [{"when": "customer", "html": "<b>Upgrade</b>", "text": ""}]
    assert v1.blocks["cta"]["default"] == {"html": "<b>Try it</b>", "text": ""} and 'block("cta")' in v1.html


def test_invalid_content_rerenders_with_the_error_and_saves_nothing(ws, marketer):
    resp = marketer.post("/email/templates/new/", form(html="<p>\n{{ contact.first_name | shout }}</p>"))
    assert resp.status_code == 400
    assert "html, line 2: No filter named &#x27;shout&#x27;" in resp.content.decode()
    assert "shout" in resp.content.decode()  # the marketer's text is kept in the form
    resp = marketer.post("/email/templates/new/", form(blocks="{not json"))
    assert resp.status_code == 400 and "blocks: not valid JSON" in resp.content.decode()
    assert not Template.objects.exists()
    marketer.post("/email/templates/new/", form())
    template = Template.objects.get()
    resp = marketer.post(f"/email/templates/{template.pk}/", form(name="Renamed", html="{{ broken"))
    assert resp.status_code == 400 and "Renamed" in resp.content.decode()
    template.refresh_from_db()
    assert template.name == "Welcome"  # settings and content are saved together or not at all


def test_submit_approve_and_the_queue(ws, marketer, layout, postal):
    resp = marketer.post("/email/templates/new/", form(layout))
    template = Template.objects.get(name="Welcome")
    resp = marketer.post(f"/email/templates/{template.pk}/versions/1/submit/", follow=True)
    assert "Version 1 submitted for approval" in resp.content.decode()
    queue = marketer.get("/email/approvals/").content.decode()
    assert f'data-version="{template.slug}-1"' in queue
    assert "you wrote this version" in queue.lower()  # the author sees why they cannot approve
    assert marketer.post(f"/email/templates/{template.pk}/versions/1/approve/").status_code == 403
    colleague = login(ws, "mo", "marketer")
    queue = colleague.get("/email/approvals/").content.decode()
    assert f"/email/templates/{template.pk}/versions/1/approve/" in queue
    resp = colleague.post(f"/email/templates/{template.pk}/versions/1/approve/", {"next": "approvals"}, follow=True)
    assert resp.redirect_chain[-1][0] == "/email/approvals/"
    assert "approved: new sends use it" in resp.content.decode() and "Nothing is waiting" in resp.content.decode()
    template.refresh_from_db()
    assert template.approved_version.number == 1
    editor = marketer.get(f"/email/templates/{template.pk}/").content.decode()
    assert "saving starts version 2" in editor and "Sends use version 1 (approved)" in editor


def test_pages_name_people_by_username_and_the_queue_names_who_submitted(ws, marketer, layout, postal):
    """QA bug: "Written by user:1", "Decided … by user:1", and the approvals list said "by user:1"
    (the author) although another user submitted the version."""
    marketer.post("/email/templates/new/", form(layout))  # mara writes version 1
    template = Template.objects.get(name="Welcome")
    sam = login(ws, "sam", "marketer")
    sam.post(f"/email/templates/{template.pk}/", form(layout, html="<p>Hello again {{ contact.first_name }}</p>"))
    assert template.versions.count() == 1  # sam edited mara's draft in place …
    sam.post(f"/email/templates/{template.pk}/versions/1/submit/")  # … and submitted it
    mo = login(ws, "mo", "marketer")
    queue = mo.get("/email/approvals/").content.decode()
    assert 'data-testid="submitted-by">by sam<' in queue and "user:" not in queue
    mo.post(f"/email/templates/{template.pk}/versions/1/approve/")
    page = mo.get(f"/email/templates/{template.pk}/versions/1/").content.decode()
    assert 'data-testid="written-by">mara ·' in page
    assert 'data-testid="submitted-by">sam ·' in page
    assert 'data-testid="decided-by">mo ·' in page
    assert "user:" not in page
    versions = mo.get(f"/email/templates/{template.pk}/versions/").content.decode()
    assert "<td>mara</td>" in versions and "mo ·" in versions and "user:" not in versions
    # the names cost one query per page, however many people wrote versions
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert mo.get(f"/email/templates/{template.pk}/versions/").status_code == 200
        return len(captured)

    before = queries()
    for n in range(2, 6):
        author = user_create(username=f"writer{n}", password="pw-123456", workspace=ws.workspace, role="marketer")
        TemplateVersion.objects.create(workspace=ws.workspace, template=template, number=n, subject="S",
                                       html="<p>x</p>", created_by=f"user:{author.pk}")
    assert queries() == before
    versions = mo.get(f"/email/templates/{template.pk}/versions/").content.decode()
    assert all(f"<td>writer{n}</td>" in versions for n in range(2, 6))


def test_high_risk_is_only_actionable_by_compliance(ws, marketer, layout, postal):
    marketer.post("/email/templates/new/", form(layout, name="Pricing", high_risk="on"))
    template = Template.objects.get(name="Pricing")
    assert template.high_risk
    marketer.post(f"/email/templates/{template.pk}/versions/1/submit/")
    admin = login(ws, "ada", "admin")
    queue = admin.get("/email/approvals/").content.decode()
    assert "compliance role must decide" in queue and "/approve/" not in queue
    resp = admin.post(f"/email/templates/{template.pk}/versions/1/approve/")
    assert resp.status_code == 403 and "compliance role" in resp.content.decode()
    resp = admin.post(f"/email/templates/{template.pk}/versions/1/reject/", {"reason": "no"})
    assert resp.status_code == 403
    compliance = login(ws, "cora", "compliance")
    queue = compliance.get("/email/approvals/").content.decode()
    assert f"/email/templates/{template.pk}/versions/1/approve/" in queue
    resp = compliance.post(f"/email/templates/{template.pk}/versions/1/reject/", {"reason": "Claim needs a source"},
                           follow=True)
    assert "rejected" in resp.content.decode()
    version = TemplateVersion.objects.get(template=template)
    assert version.status == "rejected" and version.decision_reason == "Claim needs a source"
    detail = marketer.get(f"/email/templates/{template.pk}/versions/1/").content.decode()
    assert "Claim needs a source" in detail


def test_version_page_preview_test_send_and_history_diff(ws, marketer, layout, postal):
    marketer.post("/email/templates/new/", form(layout))
    template = Template.objects.get(name="Welcome")
    detail = marketer.get(f"/email/templates/{template.pk}/versions/1/?stage=customer&role=cfo")
    page = detail.content.decode()
    assert detail.status_code == 200 and 'sandbox=""' in page and "srcdoc=" in page
    assert html.escape("Hello Ada</p>") in page or "Hello Ada&lt;/p&gt;" in page
    resp = marketer.post(f"/email/templates/{template.pk}/versions/1/test/", {"to_email": "qa@example.com"},
                         follow=True)
    assert "Test of version 1 queued to qa@example.com" in resp.content.decode()
    message = Message.objects.get(kind="test")
    assert message.to_email == "qa@example.com" and message.version.number == 1
    resp = marketer.post(f"/email/templates/{template.pk}/versions/1/test/", {"to_email": "bad"}, follow=True)
    assert "to_email: invalid email" in resp.content.decode()
    marketer.post(f"/email/templates/{template.pk}/versions/1/submit/")
    marketer.post(f"/email/templates/{template.pk}/", form(layout, subject="Welcome, {{ contact.first_name }}"))
    assert TemplateVersion.objects.filter(template=template).count() == 2
    history = marketer.get(f"/email/templates/{template.pk}/versions/?a=1&b=2").content.decode()
    assert 'data-testid="diff-subject"' in history and "+Welcome, {{ contact.first_name }}" in html.unescape(history)
    assert 'data-testid="diff-html"' not in history
    restore = marketer.post(f"/email/templates/{template.pk}/versions/1/restore/", follow=True)
    assert "Version 3 (draft) started from version 1" in restore.content.decode()


def test_viewers_cannot_change_anything(ws, layout, postal):
    template = content.template_create(workspace=ws.workspace, name="Welcome", actor="test", subject="Hi",
                                       html="<p>x {{ unsubscribe_url }} {{ postal_address }}</p>")
    sales = login(ws, "sid", "sales")
    assert sales.get("/email/").status_code == 200
    assert sales.get(f"/email/templates/{template.pk}/").status_code == 200
    assert sales.get("/email/templates/new/").status_code == 403
    assert sales.post(f"/email/templates/{template.pk}/", form(subject="changed")).status_code == 403
    assert sales.post(f"/email/templates/{template.pk}/versions/1/submit/").status_code == 403
    assert sales.post(f"/email/templates/{template.pk}/versions/1/test/", {"to_email": "x@example.com"}).status_code == 403
    assert sales.post(f"/email/templates/{template.pk}/archive/").status_code == 403
    assert sales.post("/email/layouts/new/", {"name": "x", "html": "{{ content }}"}).status_code == 403
    assert sales.post(f"/email/layouts/{layout.pk}/delete/").status_code == 403
    content.version_submit(version=template.versions.get(), actor="test")
    assert sales.post(f"/email/templates/{template.pk}/versions/1/approve/").status_code == 403
    assert TemplateVersion.objects.get(template=template).status == "pending"
    assert not Message.objects.exists() and Layout.objects.count() == 1


def test_layouts_pages(ws, marketer):
    assert "No layouts yet" in marketer.get("/email/layouts/").content.decode()
    new = marketer.get("/email/layouts/new/").content.decode()
    assert "{{ content }}" in new and "{{ unsubscribe_url }}" in new  # a starting layout is offered
    resp = marketer.post("/email/layouts/new/", {"name": "Bad", "html": "<p>no slot</p>", "text": ""})
    assert resp.status_code == 400 and "must contain {{ content }}" in resp.content.decode()
    resp = marketer.post("/email/layouts/new/", {"name": "Brand", "html": LAYOUT, "text": ""})
    layout = Layout.objects.get(name="Brand")
    assert resp.status_code == 302 and resp["Location"] == f"/email/layouts/{layout.pk}/"
    page = marketer.get(f"/email/layouts/{layout.pk}/").content.decode()
    assert 'data-testid="preview"' in page and "The email&#x27;s content goes here" in html.unescape(page) \
        or "content goes here" in html.unescape(page)
    marketer.post(f"/email/layouts/{layout.pk}/", {"name": "Brand 2", "html": LAYOUT, "text": ""})
    assert Layout.objects.get(pk=layout.pk).name == "Brand 2"
    assert "Brand 2" in marketer.get("/email/layouts/").content.decode()
    marketer.post(f"/email/layouts/{layout.pk}/delete/")
    assert not Layout.objects.filter(pk=layout.pk).exists()


def test_archive_and_list(ws, marketer, layout):
    marketer.post("/email/templates/new/", form(layout))
    template = Template.objects.get(name="Welcome")
    listing = marketer.get("/email/").content.decode()
    assert "Welcome" in listing and "not yet" in listing
    assert "Welcome" not in marketer.get("/email/?q=zzz").content.decode().split('data-testid="templates"')[-1]
    marketer.post(f"/email/templates/{template.pk}/archive/")
    assert 'data-testid="templates"' not in marketer.get("/email/").content.decode()
    assert "Welcome" in marketer.get("/email/?archived=1").content.decode()


def test_pages_of_another_workspace_answer_404(ws, other_ws, marketer, layout):
    theirs = content.template_create(workspace=other_ws.workspace, name="Theirs", actor="test", subject="x",
                                     html="<p>x</p>")
    their_layout = content.layout_create(workspace=other_ws.workspace, name="L", html="{{ content }}", actor="t")
    stranger = Contact.objects.create(workspace=other_ws.workspace, email="stranger@other.example", first_name="Stranger")
    for url in (f"/email/templates/{theirs.pk}/", f"/email/templates/{theirs.pk}/versions/",
                f"/email/templates/{theirs.pk}/versions/1/", f"/email/layouts/{their_layout.pk}/"):
        assert marketer.get(url).status_code == 404, url
    for url in (f"/email/templates/{theirs.pk}/preview/", f"/email/templates/{theirs.pk}/versions/1/submit/",
                f"/email/templates/{theirs.pk}/versions/1/test/", f"/email/templates/{theirs.pk}/archive/",
                f"/email/layouts/{their_layout.pk}/delete/"):
        assert marketer.post(url, {"to_email": "x@example.com"}).status_code == 404, url
    # a contact of another workspace is not found by the picker, and previews fall back to the sample
    assert marketer.get("/email/templates/contacts/?q=stranger").json()["items"] == []
    marketer.post("/email/templates/new/", form(layout))
    mine = Template.objects.get(workspace=ws.workspace)
    r = marketer.post(f"/email/templates/{mine.pk}/preview/", {**form(layout), "contact_id": str(stranger.pk)})
    assert "Stranger" not in r.json()["html"] and "Hello Ada" in r.json()["html"]
    assert Message.objects.count() == 0 and Template.objects.get(pk=theirs.pk).archived_at is None


# --- statistics -----------------------------------------------------------------------------------

def _row(page: str, name: str) -> dict:
    """The figures of one template's row in the list, by their data-testid."""
    import re

    body = page.split('data-testid="templates"', 1)[1]
    row = next(r for r in body.split("<tr>") if f"<strong>{name}</strong>" in r)
    return dict(re.findall(r'data-testid="(sent|open-rate|click-rate)">([^<]*)<', row))


def _version_rows(page: str) -> dict:
    import re

    section = page.split('data-testid="template-stats"', 1)[1].split("</section>", 1)[0]
    rows = {}
    for version, cells in re.findall(r'<tr data-version="([^"]+)">(.*?)</tr>', section, re.S):
        rows[version] = dict(re.findall(r'data-stat="(\w+)">([^<]*)<', cells))
    return rows


def test_templates_list_and_template_page_show_statistics_from_message_events(ws, marketer, frozen_clock):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from leadflow.messaging import stats
    from leadflow.messaging.bounces import outcome_apply
    from leadflow.messaging.events import message_event_record
    from leadflow.messaging.outbox import message_queue

    from test_email_tracking import make_contact, make_template, sent_message

    spring, (v1, v2) = make_template(ws, "spring", versions=2)
    autumn, _ = make_template(ws, "autumn")
    make_template(ws, "quiet")  # nothing sent
    people = [make_contact(ws, f"p{n}@example.com") for n in range(12)]
    m = [sent_message(ws, people[n], spring, version=v1 if n < 4 else v2) for n in range(8)]
    a = [sent_message(ws, people[8 + n], autumn) for n in range(2)]
    frozen_clock.advance(hours=1)

    def human(message, kind, **kw):
        message_event_record(message=message, kind=kind, **kw)

    def machine(message, kind, **kw):
        message_event_record(message=message, kind=kind, machine=True, detail={"machine_reason": "test"}, **kw)

    # version 1: 4 sent and delivered; people opened 2 (one by clicking), clicked 1; a proxy and a scanner don't count
    human(m[0], "opened")
    human(m[0], "opened")  # twice: one opened message
    human(m[1], "clicked", url="https://acme.example/a")
    machine(m[2], "opened")
    machine(m[3], "clicked", url="https://acme.example/a")
    # version 2: 4 sent, 1 hard bounce (3 delivered); 2 opened, 1 clicked
    human(m[4], "opened")
    outcome_apply(message=m[5], outcome="hard", status="5.1.1", source_id="x1")
    human(m[6], "opened")
    human(m[6], "clicked", url="https://acme.example/b")
    machine(m[7], "opened")
    # autumn: 2 sent, one clicked; a test send and a message not sent yet never count
    human(a[0], "clicked", url="https://acme.example/c")
    sent_message(ws, people[10], autumn, kind="test")
    message_queue(workspace_id=ws.workspace.pk, contact=people[11], template=autumn)

    page = marketer.get("/email/").content.decode()
    assert _row(page, "Spring") == {"sent": "8", "open-rate": "57.1%", "click-rate": "28.6%"}  # 4/7, 2/7
    assert _row(page, "Autumn") == {"sent": "2", "open-rate": "50.0%", "click-rate": "50.0%"}
    assert _row(page, "Quiet") == {"sent": "0", "open-rate": "—", "click-rate": "—"}
    # the same figures as the statistics API's
    total = stats.template_stats(template=spring)["total"]
    assert (total["sent"], total["open_rate"], total["click_rate"]) == (8, round(4 / 7, 4), round(2 / 7, 4))

    editor = marketer.get(f"/email/templates/{spring.pk}/").content.decode()
    rows = _version_rows(editor)
    assert rows["1"] == {"sent": "4", "delivered": "4", "opened": "2", "open_rate": "50.0%", "clicked": "1",
                         "click_rate": "25.0%", "hard_bounced": "0", "unsubscribed": "0", "complained": "0"}
    assert rows["2"] == {"sent": "4", "delivered": "3", "opened": "2", "open_rate": "66.7%", "clicked": "1",
                         "click_rate": "33.3%", "hard_bounced": "1", "unsubscribed": "0", "complained": "0"}
    assert rows["total"]["sent"] == "8" and rows["total"]["open_rate"] == "57.1%"
    assert list(rows) == ["2", "1", "total"]  # newest version first
    quiet = Template.objects.get(workspace=ws.workspace, slug="quiet")
    assert "Nothing sent with this template yet" in marketer.get(f"/email/templates/{quiet.pk}/").content.decode()

    # one grouped query for the list, whatever the number of templates and messages
    with CaptureQueriesContext(connection) as before:
        marketer.get("/email/")
    for n in range(4):
        extra, _ = make_template(ws, f"extra{n}")
        for k in range(3):
            sent_message(ws, make_contact(ws, f"x{n}-{k}@example.com"), extra)
    with CaptureQueriesContext(connection) as after:
        marketer.get("/email/")
    assert len(after.captured_queries) == len(before.captured_queries)


def test_the_list_counts_only_this_workspaces_messages(ws, other_ws, marketer):
    from test_email_tracking import make_contact, make_template, sent_message

    make_template(ws, "spring")
    theirs, _ = make_template(other_ws, "spring")
    sent_message(other_ws, make_contact(other_ws, "o@example.com"), theirs)
    assert _row(marketer.get("/email/").content.decode(), "Spring")["sent"] == "0"
