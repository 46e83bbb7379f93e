"""Email consent pages: the suppression list (search, add, lift, CSV upload) and the topics editor,
with who may do what."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from leadflow.consent import services
from leadflow.consent.models import Suppression, Topic
from leadflow.core.services import user_create

pytestmark = pytest.mark.django_db

SUPPRESSIONS = "/email/consent/suppressions/"
TOPICS = "/email/consent/topics/"


def login(ws, role: str) -> Client:
    client = Client()
    client.force_login(user_create(username=f"{role}-user", password="pw-123456", workspace=ws.workspace, role=role))
    return client


@pytest.fixture
def people(ws):
    for n, reason in enumerate(["hard_bounce", "complaint", "manual"]):
        services.suppression_add(workspace_id=ws.workspace.pk, email=f"p{n}@acme.example", reason=reason)


def test_the_suppression_list_searches_and_shows_counts(ws, other_ws, people):
    services.suppression_add(workspace_id=other_ws.workspace.pk, email="theirs@other.example", reason="manual")
    client = login(ws, "analyst")
    html = client.get(SUPPRESSIONS).content.decode()
    assert all(f"p{n}@acme.example" in html for n in range(3)) and "theirs@other.example" not in html
    assert "Suppress an address" not in html and ">Lift<" not in html  # an analyst only looks
    found = client.get(SUPPRESSIONS, {"q": "P1@"}).content.decode()
    assert "p1@acme.example" in found and "p0@acme.example" not in found
    by_reason = client.get(SUPPRESSIONS, {"reason": "hard_bounce"}).content.decode()
    assert "p0@acme.example" in by_reason and "p2@acme.example" not in by_reason
    assert Client().get(SUPPRESSIONS).status_code == 302  # login required


def test_marketers_add_and_upload_but_only_compliance_and_admins_lift(ws, people):
    marketer = login(ws, "marketer")
    page = marketer.get(SUPPRESSIONS).content.decode()
    assert "Suppress an address" in page and ">Lift<" not in page
    response = marketer.post("/email/consent/suppressions/add/", {"email": "New@Acme.example", "detail": "asked"},
                             follow=True)
    assert "new@acme.example is suppressed." in response.content.decode()
    assert Suppression.objects.get(email="new@acme.example").created_by.startswith("user:")
    listed = marketer.get(SUPPRESSIONS, {"q": "new@"}).content.decode()
    assert '<td class="small">marketer-user</td>' in listed and "user:" not in listed  # a name, not an id
    again = marketer.post("/email/consent/suppressions/add/", {"email": "new@acme.example"}, follow=True)
    assert "already suppressed" in again.content.decode()
    bad = marketer.post("/email/consent/suppressions/add/", {"email": "garbage"}, follow=True)
    assert "not an email address" in bad.content.decode()
    upload = SimpleUploadedFile("s.csv", b"email\nu1@acme.example\nu2@acme.example\nbad\n", content_type="text/csv")
    done = marketer.post("/email/consent/suppressions/import/", {"file": upload, "reason": "manual"}, follow=True)
    assert "Suppressed 2 addresses" in done.content.decode() and "line 4" in done.content.decode()
    assert marketer.post("/email/consent/suppressions/lift/", {"email": "p0@acme.example"}).status_code == 403
    assert Suppression.objects.get(email="p0@acme.example").lifted_at is None
    sales = login(ws, "sales")
    assert sales.post("/email/consent/suppressions/add/", {"email": "s@acme.example"}).status_code == 403
    assert not Suppression.objects.filter(email="s@acme.example").exists()
    for role in ("compliance", "admin"):
        client = login(ws, role)
        assert ">Lift<" in client.get(SUPPRESSIONS).content.decode()
        email = "p0@acme.example" if role == "compliance" else "p1@acme.example"
        response = client.post("/email/consent/suppressions/lift/", {"email": email}, follow=True)
        assert f"{email} may receive email again." in response.content.decode()
        assert Suppression.objects.get(email=email).lifted_by.startswith("user:")
    lifted = login(ws, "analyst").get(SUPPRESSIONS, {"lifted": "1"}).content.decode()
    assert "p0@acme.example" in lifted and "p2@acme.example" not in lifted


def test_topics_list_and_editor(ws, other_ws):
    services.topic_create(workspace_id=other_ws.workspace.pk, name="Their topic", actor="k")
    marketer = login(ws, "marketer")
    assert "No topics yet" in marketer.get(TOPICS).content.decode()
    assert marketer.get("/email/consent/topics/new/").status_code == 200
    response = marketer.post("/email/consent/topics/new/", {
        "name": "Product updates", "slug": "", "description": "What's new", "mode": "opt_in",
        "double_opt_in_countries": "de, at"})
    assert response.status_code == 302 and response["Location"] == TOPICS
    topic = Topic.objects.get(workspace=ws.workspace)
    assert (topic.slug, topic.mode, topic.double_opt_in_countries) == ("product-updates", "opt_in", ["AT", "DE"])
    listing = marketer.get(TOPICS).content.decode()
    assert "Product updates" in listing and "AT, DE" in listing and "Their topic" not in listing
    edit = marketer.get(f"/email/consent/topics/{topic.pk}/edit/").content.decode()
    assert 'value="Product updates"' in edit and "AT, DE" in edit
    # opt-out + double opt-in for everyone would block everybody: refused with the form kept as typed
    refused = marketer.post(f"/email/consent/topics/{topic.pk}/edit/", {
        "name": "Product news", "mode": "opt_out", "double_opt_in": "on", "double_opt_in_countries": ""})
    assert refused.status_code == 400
    page = refused.content.decode()
    assert "an opt-out topic cannot need double opt-in for everyone" in page and 'value="Product news"' in page
    topic.refresh_from_db()
    assert (topic.name, topic.mode, topic.double_opt_in) == ("Product updates", "opt_in", False)
    refused_new = marketer.post("/email/consent/topics/new/", {"name": "Webinars", "mode": "opt_out",
                                                               "double_opt_in": "on"})
    assert refused_new.status_code == 400 and "cannot need double opt-in" in refused_new.content.decode()
    assert not Topic.objects.filter(workspace=ws.workspace, slug="webinars").exists()
    marketer.post(f"/email/consent/topics/{topic.pk}/edit/", {"name": "Product news", "mode": "opt_in",
                                                              "double_opt_in": "on", "double_opt_in_countries": ""})
    topic.refresh_from_db()
    assert (topic.name, topic.slug, topic.mode, topic.double_opt_in) == ("Product news", "product-updates", "opt_in",
                                                                         True)
    invalid = marketer.post("/email/consent/topics/new/", {"name": "Everything", "slug": "marketing"})
    assert invalid.status_code == 400 and "reserved" in invalid.content.decode()
    marketer.post(f"/email/consent/topics/{topic.pk}/archive/")
    topic.refresh_from_db()
    assert topic.archived_at is not None and "archived" in marketer.get(TOPICS).content.decode()
    marketer.post(f"/email/consent/topics/{topic.pk}/archive/", {"restore": "1"})
    topic.refresh_from_db()
    assert topic.archived_at is None
    theirs = Topic.objects.get(workspace=other_ws.workspace)
    assert marketer.get(f"/email/consent/topics/{theirs.pk}/edit/").status_code == 404
    assert marketer.post(f"/email/consent/topics/{theirs.pk}/archive/").status_code == 404
    sales = login(ws, "sales")
    assert "Product news" in sales.get(TOPICS).content.decode()
    assert sales.get("/email/consent/topics/new/").status_code == 403
    assert sales.post(f"/email/consent/topics/{topic.pk}/archive/").status_code == 403
    compliance = login(ws, "compliance")
    assert compliance.post(f"/email/consent/topics/{topic.pk}/edit/", {"name": "Updates", "mode": "opt_out"}
                           ).status_code == 302
    # a topic saved as opt-out + double opt-in before the rule is flagged in the list
    Topic.objects.create(workspace=ws.workspace, slug="legacy", name="Legacy", mode="opt_out", double_opt_in=True)
    listing = marketer.get(TOPICS).content.decode()
    assert listing.count('data-testid="topic-rule-warning"') == 1 and "nobody receives it until they confirm" in listing
