"""No query reads across workspaces: the same ids in two workspaces are two different people."""

from __future__ import annotations

from leadflow.contacts.models import Company, Contact, Identity
from leadflow.contacts.selectors import contact_get, contact_get_by_identity, contact_search
from leadflow.tracking.models import Event

from conftest import post_batch

SAME_PERSON = [
    {"type": "page", "anonymousId": "anon-1", "messageId": "same-message-id"},
    {"type": "identify", "anonymousId": "anon-1", "userId": "user-1",
     "traits": {"email": "shared@example.com", "company": "Acme"}},
    {"type": "group", "userId": "user-1", "groupId": "g-1", "traits": {"name": "Acme"}},
]


def test_same_ids_in_two_workspaces_stay_apart(client, ws, other_ws, process):
    assert post_batch(client, ws, SAME_PERSON).status_code == 200
    assert post_batch(client, other_ws, SAME_PERSON).status_code == 200
    # The same messageId in another workspace is a different event, not a duplicate.
    assert Event.objects.filter(message_id="same-message-id").count() == 2
    process()
    a = contact_get_by_identity(workspace=ws.workspace, kind="email", value="shared@example.com")
    b = contact_get_by_identity(workspace=other_ws.workspace, kind="email", value="shared@example.com")
    assert a and b and a.pk != b.pk
    assert a.workspace_id == ws.workspace.pk and b.workspace_id == other_ws.workspace.pk
    assert set(a.events.values_list("workspace_id", flat=True)) == {ws.workspace.pk}
    assert a.company.workspace_id == ws.workspace.pk and b.company.workspace_id == other_ws.workspace.pk
    assert Company.objects.filter(group_id="g-1").count() == 2
    assert Identity.objects.filter(value="user-1").count() == 2
    # Reads through the selectors never cross over.
    assert contact_get(workspace=ws.workspace, contact_id=b.pk) is None
    assert list(contact_search(workspace=ws.workspace, q="shared")) == [a]
    assert list(contact_search(workspace=other_ws.workspace, email="shared@example.com")) == [b]


def test_api_key_of_one_workspace_reads_only_that_workspace(client, ws, other_ws, process):
    post_batch(client, ws, SAME_PERSON)
    post_batch(client, other_ws, SAME_PERSON)
    process()
    theirs = Contact.objects.get(workspace=other_ws.workspace)
    listing = client.get("/api/contacts", HTTP_AUTHORIZATION=ws.bearer).json()
    assert [c["id"] for c in listing["items"]] == [Contact.objects.get(workspace=ws.workspace).pk]
    assert client.get(f"/api/contacts/{theirs.pk}", HTTP_AUTHORIZATION=ws.bearer).status_code == 404
    assert client.get(f"/api/contacts/{theirs.pk}/events", HTTP_AUTHORIZATION=ws.bearer).status_code == 404
    assert client.delete(f"/api/contacts/{theirs.pk}", HTTP_AUTHORIZATION=ws.bearer).status_code == 404
    assert Contact.objects.filter(pk=theirs.pk).exists()


def test_every_table_carries_its_workspace():
    """Per-person tables are keyed by workspace so a distributed PostgreSQL can spread them."""
    from django.apps import apps

    exempt = {"core.workspace", "core.ratehit", "tracking.processingshard", "core.membership", "core.periodicrun"}
    for model in apps.get_app_configs():
        if not model.name.startswith("leadflow."):
            continue
        for m in model.get_models():
            label = m._meta.label_lower
            if label in exempt:
                continue
            names = {f.name for f in m._meta.get_fields()}
            assert "workspace" in names, f"{label} has no workspace column"
