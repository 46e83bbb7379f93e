"""Email content services and API: layouts, templates, versions (draft in place, new drafts,
immutability once submitted), submission rules for marketing email, approval (roles, high-risk,
authors), supersession, pinned versions of queued messages, diff, preview, test sends, audit and
workspace isolation."""

from __future__ import annotations

import pytest
from django.test import Client

from leadflow.contacts.models import Contact
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError, user_create
from leadflow.messaging import content
from leadflow.messaging.models import Message, MessagingSettings, Template, TemplateVersion
from leadflow.messaging.outbox import message_queue
from leadflow.messaging.rendering import TemplateError

pytestmark = pytest.mark.django_db

LAYOUT = ('<table><tr><td>{{ content }}</td></tr><tr><td>{{ postal_address }} '
          '<a href="{{ unsubscribe_url }}">Unsubscribe</a></td></tr></table>')


@pytest.fixture
def postal(ws):
    return MessagingSettings.objects.create(workspace=ws.workspace, postal_address="Acme Inc, 1 Main St, Springfield")


@pytest.fixture
def people(ws):
    w = ws.workspace
    return {
        "admin": user_create(username="ada-admin", password="pw-123456", workspace=w, role="admin"),
        "marketer": user_create(username="mara", password="pw-123456", workspace=w, role="marketer"),
        "marketer2": user_create(username="mo", password="pw-123456", workspace=w, role="marketer"),
        "compliance": user_create(username="cora", password="pw-123456", workspace=w, role="compliance"),
        "sales": user_create(username="sid", password="pw-123456", workspace=w, role="sales"),
    }


def actor_of(user) -> str:
    return f"user:{user.pk}"


@pytest.fixture
def layout(ws):
    return content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")


def create(ws, author="test", **kw) -> Template:
    fields = dict(name="Welcome", subject="Hi {{ contact.first_name }}", html="<p>Hello</p>", kind="marketing")
    fields.update(kw)
    return content.template_create(workspace=ws.workspace, actor=author, **fields)


def version(template, number=1) -> TemplateVersion:
    return TemplateVersion.objects.get(template=template, number=number)


# --- layouts ------------------------------------------------------------------------------------------

def test_layout_needs_content_and_valid_syntax(ws):
    with pytest.raises(ServiceError, match=r"must contain \{\{ content \}\}"):
        content.layout_create(workspace=ws.workspace, name="Bad", html="<p>no body slot</p>", actor="t")
    with pytest.raises(ServiceError, match=r"layout text: must contain"):
        content.layout_create(workspace=ws.workspace, name="Bad", html="{{ content }}", text="footer only", actor="t")
    with pytest.raises(TemplateError, match=r"layout html, line 2"):
        content.layout_create(workspace=ws.workspace, name="Bad", html="{{ content }}\n{% if %}", actor="t")
    made = content.layout_create(workspace=ws.workspace, name="Main layout", html="{{ content }}", actor="t")
    assert made.slug == "main-layout"
    again = content.layout_create(workspace=ws.workspace, name="Main layout", html="{{ content }}", actor="t")
    assert again.slug == "main-layout-2"


def test_layout_in_use_by_a_draft_cannot_be_deleted(ws, layout):
    create(ws, layout=layout)
    with pytest.raises(ServiceError, match="used by drafts of 'Welcome'"):
        content.layout_delete(layout=layout, actor="t")
    unused = content.layout_create(workspace=ws.workspace, name="Spare", html="{{ content }}", actor="t")
    content.layout_delete(layout=unused, actor="t")
    assert not type(layout).objects.filter(pk=unused.pk).exists()


# --- templates and versions --------------------------------------------------------------------------

def test_create_makes_version_one_a_draft_and_checks_the_topic(ws):
    from leadflow.consent.models import Topic

    with pytest.raises(ServiceError, match="no subscription topic 'news'"):
        create(ws, topic="news")
    Topic.objects.create(workspace=ws.workspace, slug="news", name="Newsletter")
    template = create(ws, topic="news")
    assert template.slug == "welcome" and template.topic == "news" and template.approved_version is None
    v1 = version(template)
    assert v1.status == "draft" and v1.submitted_at is None and v1.created_by == "test"
    with pytest.raises(ServiceError, match="transactional email has no subscription topic"):
        create(ws, name="Confirm", kind="transactional", topic="news")


def test_invalid_jinja_is_refused_on_save_with_the_line(ws):
    with pytest.raises(TemplateError) as caught:
        create(ws, html="<p>a</p>\n<p>{% for x in %}</p>")
    assert str(caught.value).startswith("html, line 2: ")
    assert not Template.objects.filter(workspace=ws.workspace).exists()
    template = create(ws)
    with pytest.raises(TemplateError, match=r"^subject, line 1"):
        content.version_edit(template=template, actor="t", subject="{{ oops ")
    assert version(template).subject == "Hi {{ contact.first_name }}"  # nothing half-written


def test_editing_a_draft_changes_it_in_place_then_a_submitted_version_never_changes(ws, postal, layout):
    template = create(ws, layout=layout)
    same = content.version_edit(template=template, actor="t", html="<p>Hello again</p>")
    assert same.number == 1 and TemplateVersion.objects.filter(template=template).count() == 1
    content.version_submit(version=same, actor="t")
    v2 = content.version_edit(template=template, actor="t", subject="New subject")
    assert v2.number == 2 and v2.status == "draft" and v2.html == "<p>Hello again</p>" and v2.layout_id == layout.pk
    v1 = version(template)
    assert v1.status == "pending" and v1.subject == "Hi {{ contact.first_name }}"
    # a pending version stays as it was; editing again edits draft 2 in place
    v2b = content.version_edit(template=template, actor="t", html="<p>Third take</p>")
    assert v2b.pk == v2.pk and version(template, 1).html == "<p>Hello again</p>"
    # saving with no change returns the newest version, no new row
    assert content.version_edit(template=template, actor="t").pk == v2.pk
    with pytest.raises(ServiceError, match="only a draft can be submitted"):
        content.version_submit(version=v1, actor="t")


def test_restoring_an_old_version_starts_a_new_draft_from_it(ws, postal, layout):
    template = create(ws, layout=layout, html="<p>original</p>")
    content.version_submit(version=version(template), actor="t")
    content.version_edit(template=template, actor="t", html="<p>changed</p>")
    content.version_submit(version=version(template, 2), actor="t")
    restored = content.version_edit(template=template, actor="t", base=version(template, 1))
    assert restored.number == 3 and restored.html == "<p>original</p>"


def test_marketing_submit_lists_exactly_what_is_missing(ws):
    template = create(ws, html="<p>No footer</p>")
    with pytest.raises(ServiceError) as caught:
        content.version_submit(version=version(template), actor="t")
    message = str(caught.value)
    assert "the unsubscribe link ({{ unsubscribe_url }} or {{ preferences_url }})" in message
    assert "the postal address ({{ postal_address }})" in message
    assert "a postal address in the email settings" in message
    MessagingSettings.objects.create(workspace=ws.workspace, postal_address="1 Main St")
    content.version_edit(template=template, actor="t", html="<p>{{ postal_address }}</p>")
    with pytest.raises(ServiceError) as caught:
        content.version_submit(version=version(template), actor="t")
    assert "unsubscribe link" in str(caught.value) and "postal address (" not in str(caught.value)
    # a comment mentioning the variable does not count
    content.version_edit(template=template, actor="t", html="<p>{{ postal_address }}</p>{# unsubscribe_url #}")
    with pytest.raises(ServiceError, match="unsubscribe link"):
        content.version_submit(version=version(template), actor="t")
    content.version_edit(template=template, actor="t",
                         html='<p>{{ postal_address }} <a href="{{ preferences_url }}">preferences</a></p>')
    assert content.version_submit(version=version(template), actor="t").status == "pending"


def test_transactional_email_needs_no_unsubscribe_link(ws):
    template = create(ws, name="Confirm", kind="transactional", html="<p>Confirm: {{ confirm_url }}</p>")
    assert content.version_submit(version=version(template), actor="t").status == "pending"


def test_submit_copies_the_layout_so_later_layout_edits_do_not_change_it(ws, postal, layout):
    template = create(ws, layout=layout)
    submitted = content.version_submit(version=version(template), actor="t")
    assert submitted.layout_html == LAYOUT
    content.layout_update(layout=layout, actor="t", html=LAYOUT.replace("Unsubscribe", "Leave"))
    preview = content.version_preview(version=version(template))
    assert ">Unsubscribe</a>" in preview.html
    draft = content.version_edit(template=template, actor="t", html="<p>v2</p>")
    assert ">Leave</a>" in content.version_preview(version=draft).html  # drafts follow the layout


def test_submit_renders_the_version_and_refuses_runtime_errors(ws, postal, layout):
    template = create(ws, layout=layout, html="<p>{{ contact.first_name() }}</p>")
    with pytest.raises(TemplateError, match=r"^html, line 1: 'str' object is not callable"):
        content.version_submit(version=version(template), actor="t")
    assert version(template).status == "draft" and version(template).layout_html == ""


# --- approval -------------------------------------------------------------------------------------------

def test_approval_roles_authors_and_supersession(ws, postal, layout, people):
    template = create(ws, author=actor_of(people["marketer"]), layout=layout)
    v1 = content.version_submit(version=version(template), actor=actor_of(people["marketer"]))
    with pytest.raises(ServiceError, match="you wrote this version"):
        content.version_approve(version=v1, user=people["marketer"])
    with pytest.raises(ServiceError, match="admin or marketer role"):
        content.version_approve(version=v1, user=people["sales"])
    with pytest.raises(ServiceError, match="admin or marketer role"):
        content.version_approve(version=v1, user=people["compliance"])
    approved = content.version_approve(version=v1, user=people["marketer2"])
    template.refresh_from_db()
    assert approved.status == "approved" and template.approved_version_id == v1.pk
    assert approved.decided_by == actor_of(people["marketer2"])
    entry = AuditEntry.objects.get(action="email_version.approve")
    assert entry.actor == actor_of(people["marketer2"]) and entry.data["number"] == 1 and entry.data["role"] == "marketer"

    # a queued message keeps its version when version 2 is approved
    contact = Contact.objects.create(workspace=ws.workspace, email="p@acme.example", first_name="Pat")
    queued = message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template)
    assert queued.version_id == v1.pk
    v2 = content.version_edit(template=template, actor=actor_of(people["admin"]), subject="Second")
    content.version_submit(version=v2, actor=actor_of(people["admin"]))
    content.version_approve(version=v2, user=people["admin"])  # an admin may approve their own
    template.refresh_from_db()
    queued.refresh_from_db()
    assert template.approved_version.number == 2 and version(template, 1).status == "superseded"
    assert queued.version_id == v1.pk
    later = message_queue(workspace_id=ws.workspace.pk, contact=contact, template=template)
    assert later.version_id == v2.pk
    with pytest.raises(ServiceError, match="only a version awaiting approval can be approved"):
        content.version_approve(version=version(template, 1), user=people["admin"])


def test_an_editor_of_a_draft_counts_as_its_author(ws, postal, layout, people):
    template = create(ws, author=actor_of(people["marketer"]), layout=layout)
    content.version_edit(template=template, actor=actor_of(people["marketer2"]), html="<p>tweak</p>")
    v1 = content.version_submit(version=version(template), actor=actor_of(people["marketer"]))
    with pytest.raises(ServiceError, match="you wrote this version"):
        content.version_approve(version=v1, user=people["marketer2"])


def test_high_risk_needs_the_compliance_role(ws, postal, layout, people):
    template = create(ws, author=actor_of(people["marketer"]), layout=layout, high_risk=True, name="Pricing")
    v1 = content.version_submit(version=version(template), actor="t")
    for who in ("marketer2", "admin"):
        with pytest.raises(ServiceError, match="compliance role must decide"):
            content.version_approve(version=v1, user=people[who])
        with pytest.raises(ServiceError, match="compliance role must decide"):
            content.version_reject(version=v1, user=people[who], reason="no")
    assert content.version_approve(version=v1, user=people["compliance"]).status == "approved"
    # only compliance can clear the flag
    with pytest.raises(ServiceError, match="only a member with the compliance role"):
        content.template_update(template=template, actor="t", role="admin", high_risk=False)
    content.template_update(template=template, actor="t", role="compliance", high_risk=False)
    template.refresh_from_db()
    assert template.high_risk is False


def test_reject_needs_a_reason_and_keeps_the_version(ws, postal, layout, people):
    template = create(ws, layout=layout)
    v1 = content.version_submit(version=version(template), actor="t")
    with pytest.raises(ServiceError, match="say why"):
        content.version_reject(version=v1, user=people["marketer"], reason="  ")
    rejected = content.version_reject(version=v1, user=people["marketer"], reason="Wrong price in line 2")
    assert rejected.status == "rejected" and rejected.decision_reason == "Wrong price in line 2"
    entry = AuditEntry.objects.get(action="email_version.reject")
    assert entry.data["reason"] == "Wrong price in line 2"
    nxt = content.version_edit(template=template, actor="t", html="<p>fixed</p>")
    assert nxt.number == 2 and nxt.status == "draft"


def test_an_older_version_cannot_replace_a_newer_approved_one(ws, postal, layout, people):
    template = create(ws, layout=layout)
    v1 = content.version_submit(version=version(template), actor="t")
    v2 = content.version_submit(version=content.version_edit(template=template, actor="t", subject="two"), actor="t")
    content.version_approve(version=v2, user=people["admin"])
    with pytest.raises(ServiceError, match="version 2 is approved and newer"):
        content.version_approve(version=v1, user=people["admin"])


def test_kind_cannot_change_after_approval(ws, postal, layout, people):
    template = create(ws, layout=layout)
    content.version_approve(version=content.version_submit(version=version(template), actor="t"), user=people["admin"])
    with pytest.raises(ServiceError, match="kind cannot change"):
        content.template_update(template=template, actor="t", kind="transactional")


# --- diff, preview, test send -----------------------------------------------------------------------

def test_diff_per_field(ws, postal, layout):
    template = create(ws, layout=layout, html="<p>one</p>\n<p>two</p>")
    content.version_submit(version=version(template), actor="t")
    content.version_edit(template=template, actor="t", html="<p>one</p>\n<p>three</p>",
                         blocks={"cta": {"by": "stage", "variants": [{"when": "lead", "html": "x"}], "default": {}}})
    fields = {f["field"]: f for f in content.versions_diff(a=version(template, 1), b=version(template, 2))}
    assert fields["html"]["changed"] and "-<p>two</p>" in fields["html"]["diff"] and "+<p>three</p>" in fields["html"]["diff"]
    assert fields["html"]["diff"].startswith("--- v1/html\n+++ v2/html")
    assert fields["blocks"]["changed"] and '"by": "stage"' in fields["blocks"]["diff"]
    assert not fields["subject"]["changed"] and fields["subject"]["diff"] == ""
    other = create(ws, name="Other")
    with pytest.raises(ServiceError, match="same template"):
        content.versions_diff(a=version(template, 1), b=version(other, 1))


def test_test_send_queues_a_test_message_for_a_draft(ws, other_ws, postal):
    template = create(ws, subject="Hi {{ contact.first_name }}")
    draft = version(template)
    message = content.test_send(version=draft, to_email=" QA@Example.COM ", actor="user:1")
    assert message.kind == "test" and message.version_id == draft.pk and message.to_email == "qa@example.com"
    assert message.status == "queued" and message.contact_id is None
    assert AuditEntry.objects.filter(action="email_template.test_send", data__message=message.pk).exists()
    with pytest.raises(ServiceError, match="to_email: invalid email"):
        content.test_send(version=draft, to_email="not-an-address", actor="t")
    stranger = Contact.objects.create(workspace=other_ws.workspace, email="s@other.example")
    with pytest.raises(ServiceError, match="another workspace"):
        content.test_send(version=draft, to_email="qa@example.com", actor="t", contact=stranger)


def test_test_sends_are_rate_limited_per_workspace(ws, postal, frozen_clock, monkeypatch):
    monkeypatch.setattr(content, "TEST_SENDS_PER_HOUR", 3)
    draft = version(create(ws))
    for _ in range(3):
        content.test_send(version=draft, to_email="qa@example.com", actor="t")
    with pytest.raises(ServiceError, match="at most 3 test sends an hour"):
        content.test_send(version=draft, to_email="qa@example.com", actor="t")
    frozen_clock.advance(hours=1, seconds=1)
    content.test_send(version=draft, to_email="qa@example.com", actor="t")
    assert Message.objects.filter(kind="test").count() == 4


# --- API ------------------------------------------------------------------------------------------------

def api(client, ws, method, path, body=None):
    kwargs = {"HTTP_AUTHORIZATION": ws.bearer}
    url = f"/api/email/templates{path}"
    if body is not None:
        return getattr(client, method)(url, body, content_type="application/json", **kwargs)
    return getattr(client, method)(url, **kwargs)


def test_api_end_to_end(client, ws, postal):
    r = api(client, ws, "post", "/layouts", {"name": "Main", "html": LAYOUT})
    assert r.status_code == 201, r.content
    layout_id = r.json()["id"]
    r = api(client, ws, "post", "", {"name": "Welcome", "subject": "Hi {{ contact.first_name }}",
                                      "html": "<p>Hello {{ contact.first_name }}</p>", "layout_id": layout_id})
    assert r.status_code == 201, r.content
    tid = r.json()["id"]
    assert r.json()["latest_version"] == 1 and r.json()["approved_version"] is None
    r = api(client, ws, "post", f"/{tid}/versions", {"html": "<p>Hello {{ contact.first_name }}!</p>"})
    assert r.status_code == 200 and r.json()["number"] == 1 and r.json()["status"] == "draft"
    r = api(client, ws, "post", f"/{tid}/versions/1/preview", {"stage": "customer"})
    assert r.status_code == 200 and "Hello Ada!" in r.json()["html"] and r.json()["subject"] == "Hi Ada"
    contact = Contact.objects.create(workspace=ws.workspace, email="grace@acme.example", first_name="Grace")
    r = api(client, ws, "post", f"/{tid}/versions/1/preview", {"contact_id": contact.pk})
    assert "Hello Grace!" in r.json()["html"] and "Grace" in r.json()["text"]
    r = api(client, ws, "post", f"/{tid}/versions/1/test-send", {"to_email": "qa@example.com"})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    r = api(client, ws, "post", f"/{tid}/versions/1/submit")
    assert r.status_code == 200 and r.json()["status"] == "pending" and r.json()["layout_html"] == LAYOUT
    r = api(client, ws, "post", f"/{tid}/versions/1/approve")
    assert r.status_code == 200 and r.json()["status"] == "approved" and r.json()["decided_by"].startswith("key:")
    r = api(client, ws, "post", f"/{tid}/versions", {"subject": "Hello {{ contact.first_name }}"})
    assert r.json()["number"] == 2
    r = api(client, ws, "post", f"/{tid}/versions/2/submit")
    r = api(client, ws, "post", f"/{tid}/versions/2/reject", {"reason": "tone"})
    assert r.json()["status"] == "rejected" and r.json()["decision_reason"] == "tone"
    r = api(client, ws, "get", f"/{tid}/diff?a=1&b=2")
    subject = next(f for f in r.json() if f["field"] == "subject")
    assert subject["changed"] and "+Hello {{ contact.first_name }}" in subject["diff"]
    r = api(client, ws, "get", f"/{tid}/versions")
    assert [v["number"] for v in r.json()] == [2, 1]
    r = api(client, ws, "get", "")
    assert r.json()["items"][0]["approved_version"] == 1 and r.json()["items"][0]["latest_version"] == 2
    r = api(client, ws, "patch", f"/{tid}", {"name": "Welcome email"})
    assert r.json()["name"] == "Welcome email"
    r = api(client, ws, "delete", f"/{tid}")
    assert r.status_code == 204
    assert api(client, ws, "get", "").json()["items"] == []
    assert api(client, ws, "get", "?archived=true").json()["items"][0]["id"] == tid


def test_api_errors_are_clear(client, ws, postal):
    r = api(client, ws, "post", "", {"name": "Broken", "subject": "x", "html": "<p>\n{{ contact.first_name | nope }}"})
    assert r.status_code == 400 and r.json()["detail"] == "html, line 2: No filter named 'nope'"
    r = api(client, ws, "post", "", {"name": "T", "subject": "x", "html": "<p>x</p>", "blocks": {"b": {"by": "moon"}}})
    assert r.status_code == 400 and "by must be one of" in r.json()["detail"]
    r = api(client, ws, "post", "", {"name": "T", "subject": "x"})
    assert r.status_code == 422 and "html" in r.json()["detail"]
    tid = api(client, ws, "post", "", {"name": "T", "subject": "x", "html": "<p>x</p>"}).json()["id"]
    r = api(client, ws, "post", f"/{tid}/versions/1/submit")
    assert r.status_code == 400 and "unsubscribe link" in r.json()["detail"]
    r = api(client, ws, "post", f"/{tid}/versions/1/approve")
    assert r.status_code == 400 and "only a version awaiting approval" in r.json()["detail"]
    assert api(client, ws, "get", f"/{tid}/versions/9").status_code == 404
    r = api(client, ws, "post", f"/{tid}/versions/1/test-send", {"to_email": "nope"})
    assert r.status_code == 400 and "to_email" in r.json()["detail"]


def test_api_cannot_approve_high_risk(client, ws, postal, layout):
    template = create(ws, layout=layout, high_risk=True)
    content.version_submit(version=version(template), actor="t")
    r = api(client, ws, "post", f"/{template.pk}/versions/1/approve")
    assert r.status_code == 400 and "compliance role in the web UI" in r.json()["detail"]
    assert version(template).status == "pending"


def test_api_workspace_isolation(client, ws, other_ws, postal, layout):
    template = create(ws, layout=layout)
    contact = Contact.objects.create(workspace=ws.workspace, email="mine@acme.example")
    for method, path, body in [
        ("get", f"/{template.pk}", None), ("patch", f"/{template.pk}", {"name": "x"}), ("delete", f"/{template.pk}", None),
        ("get", f"/{template.pk}/versions", None), ("get", f"/{template.pk}/versions/1", None),
        ("post", f"/{template.pk}/versions", {"subject": "x"}), ("post", f"/{template.pk}/versions/1/submit", None),
        ("post", f"/{template.pk}/versions/1/approve", None),
        ("post", f"/{template.pk}/versions/1/reject", {"reason": "x"}),
        ("post", f"/{template.pk}/versions/1/preview", {}), ("get", f"/{template.pk}/diff?a=1&b=1", None),
        ("post", f"/{template.pk}/versions/1/test-send", {"to_email": "x@example.com"}),
        ("get", f"/layouts/{layout.pk}", None), ("patch", f"/layouts/{layout.pk}", {"name": "x"}),
        ("delete", f"/layouts/{layout.pk}", None),
    ]:
        r = api(client, other_ws, method, path, body)
        assert r.status_code == 404, (method, path, r.status_code)
    assert api(client, other_ws, "get", "").json()["items"] == []
    assert api(client, other_ws, "get", "/layouts").json() == []
    # another workspace cannot preview with this workspace's contact, nor use its layout
    mine = create(other_ws, name="Theirs")
    r = api(client, other_ws, "post", f"/{mine.pk}/versions/1/preview", {"contact_id": contact.pk})
    assert r.status_code == 404
    r = api(client, other_ws, "post", "", {"name": "X", "subject": "x", "html": "<p>x</p>", "layout_id": layout.pk})
    assert r.status_code == 400 and "no layout" in r.json()["detail"]
    template.refresh_from_db()
    assert template.name == "Welcome" and template.archived_at is None and version(template).status == "draft"
    assert Message.objects.count() == 0


def test_api_requires_a_secret_key(client, ws):
    assert Client().get("/api/email/templates").status_code == 401
    r = client.get("/api/email/templates", HTTP_AUTHORIZATION=f"Bearer {ws.write_key}")
    assert r.status_code == 401
