"""Duplicating a template and subject-line variants of a broadcast: a copy takes the content but
never the approval, bad input is refused and leaves nothing behind, workspaces stay apart; adding
a subject variant submits a copy for approval, the broadcast cannot start until an approver
approves it, and then a real A/B run through the dispatcher to a loopback SMTP server delivers
exactly the two subject lines to the test groups and the winner's to the rest."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from django.test import Client

from leadflow.consent.models import Topic
from leadflow.core.models import AuditEntry
from leadflow.core.services import ServiceError, user_create
from leadflow.messaging import broadcasts, content, dispatch
from leadflow.messaging.models import (
    Broadcast, BroadcastVariant, Message, MessagingSettings, Template, TemplateVersion,
)

from smtp_sink import sending_to_sink, subjects_by_address
from test_broadcasts import click, make_template, people, static_list

pytestmark = pytest.mark.django_db

LAYOUT = '{{ content }}<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
BLOCKS = {"cta": {"by": "stage", "variants": [{"when": "customer", "html": "<b>Upgrade</b>"}],
                  "default": {"html": "<b>Try it</b>"}}}


@pytest.fixture
def team(ws):
    w = ws.workspace
    return {key: user_create(username=name, password="pw-123456", email=f"{name}@acme.example", workspace=w,
                             role=role)
            for key, name, role in [("marketer", "mara", "marketer"), ("mo", "mo", "marketer"),
                                    ("compliance", "cora", "compliance"), ("analyst", "anna", "analyst")]}


def actor_of(user) -> str:
    return f"user:{user.pk}"


def client_for(user, **kwargs) -> Client:
    c = Client(**kwargs)
    c.force_login(user)
    return c


@pytest.fixture
def postal(ws):
    return MessagingSettings.objects.create(workspace=ws.workspace, postal_address="Acme Inc, 1 Main St")


@pytest.fixture
def layout(ws):
    return content.layout_create(workspace=ws.workspace, name="Main", html=LAYOUT, actor="test")


def approved_template(ws, team, layout, **kw) -> Template:
    """A template through the real workflow: written by mara, approved by mo (or cora if high-risk)."""
    fields = dict(name="Spring sale", subject="Spring sale, {{ contact.first_name }}", preheader="20% off",
                  html='<p>Hi {{ contact.first_name }} {{ block("cta") }}</p>', text="Hi {{ contact.first_name }}",
                  blocks=BLOCKS, layout=layout)
    fields.update(kw)
    template = content.template_create(workspace=ws.workspace, actor=actor_of(team["marketer"]), **fields)
    v1 = content.version_submit(version=content.version_latest(template=template), actor=actor_of(team["marketer"]))
    content.version_approve(version=v1, user=team["compliance"] if template.high_risk else team["mo"])
    template.refresh_from_db()
    return template


# --- duplicating ------------------------------------------------------------------------------------

def test_duplicate_copies_the_content_but_never_the_approval(ws, team, postal, layout):
    Topic.objects.create(workspace=ws.workspace, slug="offers", name="Offers")
    source = approved_template(ws, team, layout, topic="offers", high_risk=True)
    v2 = content.version_edit(template=source, actor=actor_of(team["marketer"]), html="<p>Version two</p>")
    assert source.approved_version.number == 1 and v2.number == 2 and v2.status == "draft"

    copy = content.template_duplicate(template=source, actor=actor_of(team["mo"]))
    assert copy.name == "Spring sale (copy)" and copy.slug == "spring-sale-copy" and copy.pk != source.pk
    assert (copy.kind, copy.topic, copy.high_risk) == ("marketing", "offers", True)
    assert copy.approved_version is None
    (only,) = TemplateVersion.objects.filter(template=copy)
    assert only.number == 1 and only.status == "draft" and only.submitted_at is None
    assert (only.decided_by, only.decided_at, only.layout_html) == ("", None, "")
    assert only.created_by == actor_of(team["mo"]) and only.note == "copied from “Spring sale” version 2"
    assert only.html == "<p>Version two</p>", "by default the newest version is copied"
    assert (only.subject, only.preheader, only.text, only.blocks, only.layout_id) == (
        v2.subject, v2.preheader, v2.text, v2.blocks, layout.pk)
    entry = AuditEntry.objects.get(action="email_template.duplicate")
    assert entry.target == f"email_template:{copy.pk}" and entry.actor == actor_of(team["mo"])
    assert entry.data["from"] == source.pk and entry.data["from_version"] == 2 and entry.data["changed"] == []

    # a chosen version, a new subject and preheader, and the next free name
    v1 = source.approved_version
    again = content.template_duplicate(template=source, actor=actor_of(team["mo"]), version=v1,
                                       subject="Last chance, {{ contact.first_name }}", preheader="Ends tonight")
    assert again.name == "Spring sale (copy 2)" and again.slug == "spring-sale-copy-2"
    copied = content.version_latest(template=again)
    assert copied.subject == "Last chance, {{ contact.first_name }}" and copied.preheader == "Ends tonight"
    assert (copied.html, copied.blocks, copied.status) == (v1.html, v1.blocks, "draft")
    named = content.template_duplicate(template=source, actor="test", name="  Spring   sale, B  ")
    assert named.name == "Spring sale, B"

    # the copy is approved on its own, by the role its flag needs; the source never changed
    pending = content.version_submit(version=copied, actor=actor_of(team["mo"]))
    with pytest.raises(ServiceError, match="compliance role"):
        content.version_approve(version=pending, user=team["marketer"])
    content.version_approve(version=pending, user=team["compliance"])
    source.refresh_from_db()
    assert source.approved_version_id == v1.pk and source.versions.count() == 2
    assert TemplateVersion.objects.get(pk=v1.pk).status == "approved"


def test_duplicate_refuses_bad_input_and_creates_nothing(ws, team, postal, layout):
    source = approved_template(ws, team, layout)
    other = content.template_create(workspace=ws.workspace, name="Other", subject="x", html="<p>x</p>", actor="t")
    before = Template.objects.count()
    for kwargs, message in [
        ({"name": "spring SALE"}, "a template named 'spring SALE' already exists"),
        ({"name": "   "}, "a template needs a name"),
        ({"subject": ""}, "subject: must not be empty"),
        ({"subject": "  "}, "subject: must not be empty"),
        ({"subject": "Hi {{ contact.first_name "}, "subject, line 1"),
        ({"version": content.version_latest(template=other)}, "belongs to another template"),
    ]:
        with pytest.raises(ServiceError, match=message):
            content.template_duplicate(template=source, actor="test", **kwargs)
    content.template_archive(template=source, actor="test")
    with pytest.raises(ServiceError, match="archived; an archived template cannot be duplicated"):
        content.template_duplicate(template=source, actor="test")
    assert Template.objects.count() == before
    assert not AuditEntry.objects.filter(action="email_template.duplicate").exists()
    # the name of an archived template is free again
    assert content.template_duplicate(template=other, actor="test", name="Spring sale").name == "Spring sale"


def test_duplicate_through_the_api_and_workspace_isolation(client, ws, other_ws, team, postal, layout):
    source = approved_template(ws, team, layout)
    auth = {"HTTP_AUTHORIZATION": ws.bearer}
    url = f"/api/email/templates/{source.pk}/duplicate"
    r = client.post(url, {"name": "Spring sale B", "subject": "Last chance", "version": 1},
                    content_type="application/json", **auth)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["name"] == "Spring sale B" and body["approved_version"] is None and body["latest_version"] == 1
    copy = Template.objects.get(pk=body["id"], workspace=ws.workspace)
    assert content.version_latest(template=copy).subject == "Last chance"
    r = client.post(url, content_type="application/json", **auth)  # no body: the newest version, default name
    assert r.status_code == 201 and r.json()["name"] == "Spring sale (copy)"
    r = client.post(url, {"name": "Spring sale B"}, content_type="application/json", **auth)
    assert r.status_code == 400 and "already exists" in r.json()["detail"]
    r = client.post(url, {"subject": ""}, content_type="application/json", **auth)
    assert r.status_code == 400 and r.json()["detail"] == "subject: must not be empty"
    r = client.post(url, {"version": 9}, content_type="application/json", **auth)
    assert r.status_code == 404

    # another workspace can neither copy this template nor see the copies; its names do not clash
    count = Template.objects.count()
    r = client.post(url, {"name": "Stolen"}, content_type="application/json", HTTP_AUTHORIZATION=other_ws.bearer)
    assert r.status_code == 404 and Template.objects.count() == count
    stranger = user_create(username="otto", password="pw-123456", workspace=other_ws.workspace, role="admin")
    assert client_for(stranger).post(f"/email/templates/{source.pk}/duplicate/").status_code == 404
    theirs = content.template_create(workspace=other_ws.workspace, name="Theirs", subject="x", html="<p>x</p>",
                                     actor="t")
    mine = content.template_duplicate(template=theirs, actor="t", name="Spring sale B (copy)")
    assert mine.workspace_id == other_ws.workspace.pk and mine.name == "Spring sale B (copy)"
    assert Template.objects.filter(workspace=other_ws.workspace).count() == 2
    assert Template.objects.count() == count + 2


def test_the_duplicate_button(ws, team, postal, layout):
    source = approved_template(ws, team, layout)
    mara = client_for(team["marketer"])
    page = mara.get(f"/email/templates/{source.pk}/").content.decode()
    assert f'action="/email/templates/{source.pk}/duplicate/"' in page and ">Duplicate</button>" in page
    assert "Duplicate: a new template from this version" in mara.get(
        f"/email/templates/{source.pk}/versions/1/").content.decode()
    assert mara.get(f"/email/templates/{source.pk}/duplicate/").status_code == 405
    resp = mara.post(f"/email/templates/{source.pk}/duplicate/")
    copy = Template.objects.get(workspace=ws.workspace, name="Spring sale (copy)")
    assert resp.status_code == 302 and resp["Location"] == f"/email/templates/{copy.pk}/"
    editor = mara.get(resp["Location"]).content.decode()
    assert "Editing version 1, a draft" in editor and "No version is approved yet" in editor
    resp = mara.post(f"/email/templates/{source.pk}/duplicate/", {"version": "1", "name": "Spring sale (copy)"})
    assert resp.status_code == 302 and resp["Location"] == f"/email/templates/{source.pk}/versions/1/"
    assert "already exists" in mara.get(resp["Location"]).content.decode()
    assert mara.post(f"/email/templates/{source.pk}/duplicate/", {"version": "7"}).status_code == 404

    # only editors, and never without the CSRF token
    analyst = client_for(team["analyst"])
    assert ">Duplicate</button>" not in analyst.get(f"/email/templates/{source.pk}/").content.decode()
    assert analyst.post(f"/email/templates/{source.pk}/duplicate/").status_code == 403
    strict = client_for(team["marketer"], enforce_csrf_checks=True)
    assert strict.post(f"/email/templates/{source.pk}/duplicate/").status_code == 403
    assert Template.objects.filter(workspace=ws.workspace).count() == 2


# --- subject-line variants ------------------------------------------------------------------------------

@pytest.fixture
def draft(ws, team, postal, layout):
    source = approved_template(ws, team, layout)
    return broadcasts.broadcast_create(workspace=ws.workspace, name="April offer", template=source,
                                       segment=static_list(ws, people(ws, 10)), actor=actor_of(team["marketer"]))


def test_a_subject_variant_waits_for_an_approver_before_the_broadcast_can_start(ws, team, draft):
    source = draft.template
    variant = broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="Last chance, {{ contact.first_name }}",
                                                       actor=actor_of(team["marketer"]))
    assert variant.label == "B"
    copy = variant.version.template
    assert copy.name == "Spring sale — April offer, variant B" and copy.topic == source.topic
    pending = content.version_latest(template=copy)
    assert variant.version_id == pending.pk and pending.number == 1 and pending.status == "pending"
    assert copy.approved_version is None
    a = source.approved_version
    assert pending.subject == "Last chance, {{ contact.first_name }}"
    assert (pending.preheader, pending.html, pending.text, pending.blocks, pending.layout_id) == (
        a.preheader, a.html, a.text, a.blocks, a.layout_id), "only the subject differs"
    assert [v.label for v in BroadcastVariant.objects.filter(broadcast=draft).order_by("label")] == ["A", "B"]
    assert {e.action for e in AuditEntry.objects.filter(target=f"broadcast:{draft.pk}")} >= {
        "broadcast.update", "broadcast.subject_variant"}
    rows = broadcasts.broadcast_variant_approvals(broadcast=draft)
    assert [(r["label"], r["state"], r["ready"]) for r in rows] == [("A", "approved", True), ("B", "pending", False)]

    # starting is refused until an approver (not the author) approves it
    with pytest.raises(ServiceError, match="no approved version"):
        broadcasts.broadcast_send_now(broadcast=draft, actor="test")
    with pytest.raises(ServiceError, match="no approved version"):
        broadcasts.broadcast_schedule(broadcast=draft, at=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc),
                                      actor="test")
    with pytest.raises(ServiceError, match="you wrote this version"):
        content.version_approve(version=pending, user=team["marketer"])
    with pytest.raises(ServiceError, match="admin or marketer role"):
        content.version_approve(version=pending, user=team["analyst"])
    assert Broadcast.objects.get(pk=draft.pk).status == "draft"
    content.version_approve(version=pending, user=team["mo"])
    b = broadcasts.broadcast_send_now(broadcast=draft, actor="test")
    assert b.status == "testing"
    pinned = {v.label: v.version for v in BroadcastVariant.objects.filter(broadcast=b).select_related("version")}
    assert pinned["A"].pk == a.pk and pinned["B"].pk == pending.pk
    assert set(Message.objects.filter(broadcast=b, variant__label="B").values_list("version", flat=True)) == {
        pending.pk}


def test_subject_variants_refuse_bad_input_and_leave_nothing_behind(ws, team, draft):
    marketer = actor_of(team["marketer"])
    templates = Template.objects.count()
    for subject, message in [("", "subject: must not be empty"), ("   ", "subject: must not be empty"),
                             ("spring  sale, {{ contact.first_name }}", "variant A already has the subject"),
                             ("{% if %}", "subject, line 1")]:
        with pytest.raises(ServiceError, match=message):
            broadcasts.broadcast_subject_variant_add(broadcast=draft, subject=subject, actor=marketer)
    # a copy that cannot be submitted (the postal address was removed) is not kept either
    MessagingSettings.objects.filter(workspace=ws.workspace).update(postal_address="")
    with pytest.raises(ServiceError, match="a postal address in the email settings"):
        broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="Last chance", actor=marketer)
    assert Template.objects.count() == templates and not BroadcastVariant.objects.filter(broadcast=draft).exists()
    MessagingSettings.objects.filter(workspace=ws.workspace).update(postal_address="Acme Inc, 1 Main St")

    assert broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="Last chance", actor=marketer).label == "B"
    with pytest.raises(ServiceError, match="variant B already has the subject 'Last chance'"):
        broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="last  CHANCE", actor=marketer)
    for label, subject in zip("CD", ["Ends tonight", "Final hours"]):
        assert broadcasts.broadcast_subject_variant_add(broadcast=draft, subject=subject, actor=marketer).label == label
    with pytest.raises(ServiceError, match="already has 4 variants"):
        broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="One more", actor=marketer)
    assert Template.objects.count() == templates + 3
    assert "at most four variants" in client_for(team["marketer"]).get(
        f"/email/broadcasts/{draft.pk}/edit/").content.decode()

    for v in BroadcastVariant.objects.filter(broadcast=draft).exclude(label="A").select_related("version"):
        content.version_approve(version=v.version, user=team["mo"])
    broadcasts.broadcast_schedule(broadcast=draft, at=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc), actor="t")
    with pytest.raises(ServiceError, match="this broadcast is scheduled"):
        broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="Later", actor=marketer)
    broadcasts.broadcast_send_now(broadcast=draft, actor="t")
    with pytest.raises(ServiceError, match="variants are added to drafts only"):
        broadcasts.broadcast_subject_variant_add(broadcast=draft, subject="Too late", actor=marketer)
    assert Template.objects.count() == templates + 3


def test_the_subject_variant_form_on_the_broadcast_pages(ws, team, draft):
    mara = client_for(team["marketer"])
    edit = mara.get(f"/email/broadcasts/{draft.pk}/edit/").content.decode()
    assert "Add a subject-line variant" in edit and "Add variant B and submit it for approval" in edit
    assert 'data-testid="approval-A"><span class="status approved">approved</span> · version 1' in edit
    url = f"/email/broadcasts/{draft.pk}/subject-variant/"

    # bad input: the page again with the error and what was typed; nothing created
    count = Template.objects.count()
    resp = mara.post(url, {"subject": "", "preheader": "Keep me"})
    assert resp.status_code == 400 and "subject: must not be empty" in resp.content.decode()
    assert 'value="Keep me"' in resp.content.decode()
    resp = mara.post(url, {"subject": "Spring sale, {{ contact.first_name }}"})
    assert resp.status_code == 400 and "variant A already has the subject" in resp.content.decode()
    assert Template.objects.count() == count

    resp = mara.post(url, {"subject": "Last chance, {{ contact.first_name }}", "preheader": ""})
    assert resp.status_code == 302 and resp["Location"] == f"/email/broadcasts/{draft.pk}/edit/#subject-variants"
    copy = BroadcastVariant.objects.select_related("version__template").get(broadcast=draft, label="B").version.template
    assert content.version_latest(template=copy).preheader == "20% off", "an empty preheader keeps A's"
    edit = mara.get(f"/email/broadcasts/{draft.pk}/edit/").content.decode()
    assert 'data-testid="approval-B"><span class="status pending">awaiting approval</span>' in edit
    assert "Add variant C" in edit and f'<option value="{copy.pk}" selected>' in edit
    detail = mara.get(f"/email/broadcasts/{draft.pk}/").content.decode()
    assert 'data-testid="not-ready">Cannot start yet: variant B' in detail and "is awaiting approval" in detail
    assert "Last chance, {{ contact.first_name }}" in detail
    resp = mara.post(f"/email/broadcasts/{draft.pk}/confirm/", {"action": "send"})
    assert resp.status_code == 200 and "has no approved version" in resp.content.decode()
    assert Broadcast.objects.get(pk=draft.pk).status == "draft"

    # mara wrote it, so mo approves it in the approval queue; then the broadcast starts
    assert mara.post(f"/email/templates/{copy.pk}/versions/1/approve/").status_code == 403
    mo = client_for(team["mo"])
    assert "Last chance" in mo.get("/email/approvals/").content.decode()
    assert mo.post(f"/email/templates/{copy.pk}/versions/1/approve/").status_code == 302
    detail = mara.get(f"/email/broadcasts/{draft.pk}/").content.decode()
    assert "not-ready" not in detail and 'data-testid="approval-B"><span class="status approved">' in detail
    resp = mara.post(f"/email/broadcasts/{draft.pk}/confirm/", {"action": "send"})
    assert resp.status_code == 302 and Broadcast.objects.get(pk=draft.pk).status == "testing"
    assert mara.post(url, {"subject": "Too late"}).status_code == 302  # back to the page with the reason
    assert Template.objects.count() == count + 1


def test_the_subject_variant_form_is_for_editors_of_this_workspace_only(ws, other_ws, team, draft):
    url = f"/email/broadcasts/{draft.pk}/subject-variant/"
    assert client_for(team["analyst"]).post(url, {"subject": "Nope"}).status_code == 403
    assert client_for(team["marketer"], enforce_csrf_checks=True).post(url, {"subject": "Nope"}).status_code == 403
    assert client_for(team["marketer"]).get(url).status_code == 405
    stranger = user_create(username="otto", password="pw-123456", workspace=other_ws.workspace, role="admin")
    assert client_for(stranger).post(url, {"subject": "Nope"}).status_code == 404
    assert not BroadcastVariant.objects.filter(broadcast=draft).exists()


def test_subject_variants_through_the_api(client, ws, other_ws, team, draft):
    auth = {"HTTP_AUTHORIZATION": ws.bearer}
    base = f"/api/email/broadcasts/{draft.pk}"
    r = client.post(f"{base}/subject-variants", {"subject": "Last chance", "preheader": "Ends tonight"},
                    content_type="application/json", **auth)
    assert r.status_code == 201, r.content
    variants = r.json()["variants"]
    assert [(v["label"], v["version_status"]) for v in variants] == [("A", "approved"), ("B", "pending")]
    r = client.post(f"{base}/subject-variants", {"subject": ""}, content_type="application/json", **auth)
    assert r.status_code == 400 and r.json()["detail"] == "subject: must not be empty"
    r = client.post(f"{base}/subject-variants", {"subject": "x"}, content_type="application/json",
                    HTTP_AUTHORIZATION=other_ws.bearer)
    assert r.status_code == 404
    r = client.post(f"{base}/send", **auth)
    assert r.status_code == 400 and "no approved version" in r.json()["detail"]
    copy_id = variants[1]["template_id"]
    r = client.post(f"/api/email/templates/{copy_id}/versions/1/approve", **auth)
    assert r.status_code == 200 and r.json()["status"] == "approved"
    r = client.post(f"{base}/send", **auth)
    assert r.status_code == 200 and r.json()["status"] == "testing"
    assert [v["version_status"] for v in r.json()["variants"]] == ["approved", "approved"]


# --- end to end ---------------------------------------------------------------------------------------------

@pytest.fixture
def sink(ws):
    with sending_to_sink(ws.workspace) as server:
        yield server


def test_a_subject_line_ab_test_end_to_end_through_the_dispatcher(ws, team, sink, frozen_clock):
    crowd = people(ws, 40)
    sale = make_template(ws, "spring-sale", subject="Spring sale for {{ contact.first_name }}")
    b = broadcasts.broadcast_create(workspace=ws.workspace, name="April offer", template=sale,
                                    segment=static_list(ws, crowd), test_share=0.5, decide_after_hours=2,
                                    actor=actor_of(team["marketer"]))
    variant = broadcasts.broadcast_subject_variant_add(broadcast=b, subject="Last chance, {{ contact.first_name }}",
                                                       actor=actor_of(team["marketer"]))
    start = frozen_clock.advance(minutes=10)
    with pytest.raises(ServiceError, match="no approved version"):
        broadcasts.broadcast_schedule(broadcast=b, at=start, actor="test")
    content.version_approve(version=variant.version, user=team["mo"])
    broadcasts.broadcast_schedule(broadcast=b, at=start, actor="test")
    broadcasts.broadcasts_tick(now=start)
    b.refresh_from_db()
    assert b.status == "testing" and Message.objects.filter(broadcast=b).count() == 40

    dispatch.dispatch_run()
    test_group = Message.objects.filter(broadcast=b, variant__isnull=False)
    assert Counter(test_group.values_list("variant__label", "status")) == {("A", "sent"): 10, ("B", "sent"): 10}
    assert not Message.objects.filter(broadcast=b, variant__isnull=True).exclude(status="queued").exists()
    received = subjects_by_address(sink)
    assert len(received) == 20
    wording = {"A": "Spring sale for {}", "B": "Last chance, {}"}
    for message in test_group.select_related("variant", "contact"):
        assert received[message.to_email] == [wording[message.variant.label].format(message.contact.first_name)]

    click(test_group.filter(variant__label="B"))
    frozen_clock.set(b.decide_at)
    broadcasts.broadcasts_tick(now=b.decide_at)
    b.refresh_from_db()
    assert b.winner.label == "B" and b.result["significant"] is True
    dispatch.dispatch_run()
    broadcasts.broadcasts_tick(now=b.decide_at + dt.timedelta(seconds=15))
    b.refresh_from_db()
    assert b.status == "done"

    received = subjects_by_address(sink)
    assert len(received) == 40 and all(len(subjects) == 1 for subjects in received.values()), \
        "every address exactly one message"
    rest = Message.objects.filter(broadcast=b, variant__isnull=True).select_related("contact")
    assert rest.count() == 20 and set(rest.values_list("status", flat=True)) == {"sent"}
    for message in rest:
        assert received[message.to_email] == [f"Last chance, {message.contact.first_name}"]
    shapes = Counter(subject.split(" ")[0] for subjects in received.values() for subject in subjects)
    assert shapes == {"Spring": 10, "Last": 30}, "exactly the two subject lines, the winner's to the rest"
