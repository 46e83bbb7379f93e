"""Identity resolution and merges: one profile per person, and no event is ever lost."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from django.db import connection
from django.test import override_settings
from hypothesis import HealthCheck, given, settings, strategies as st

from leadflow.consent.models import ConsentRecord
from leadflow.contacts.models import Contact, ContactMerge, Identity
from leadflow.contacts.processing import event_keys
from leadflow.contacts.selectors import contact_get, contact_get_by_identity
from leadflow.contacts.services import contact_merge
from leadflow.core.pipeline import process_pending
from leadflow.tracking.ingest import events_append
from leadflow.tracking.models import Event

from conftest import make_workspace

T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)


def at(minutes: int) -> str:
    return (T0 + dt.timedelta(minutes=minutes)).isoformat()


def send(keys, messages):
    result = events_append(workspace=keys.workspace, messages=messages)
    assert not result.rejected, result.rejected
    process_pending()


def test_anonymous_history_attaches_when_the_person_identifies(ws):
    send(ws, [
        {"type": "page", "anonymousId": "anon-1", "name": "Home", "timestamp": at(0),
         "context": {"page": {"url": "https://acme.test/?utm_source=google&utm_medium=cpc"},
                     "campaign": {"source": "google", "medium": "cpc", "name": "brand"}}},
        {"type": "track", "anonymousId": "anon-1", "event": "Asset Downloaded", "timestamp": at(5),
         "properties": {"magnet_slug": "retirement-guide"}},
    ])
    assert Contact.objects.count() == 1  # an anonymous profile
    send(ws, [{"type": "identify", "anonymousId": "anon-1", "userId": "user-1", "timestamp": at(10),
               "traits": {"email": "Ana.Silva@Example.com", "firstName": "ana"}}])
    contact = Contact.objects.get()
    assert contact.email == "ana.silva@example.com" and contact.user_id == "user-1"
    assert contact.first_name == "Ana"
    assert contact.events.exclude(event="Lifecycle Stage Changed").count() == 3
    assert contact.source_channel == "paid_search"
    assert contact.first_touch["utm_campaign"] == "brand"
    kinds = set(contact.identities.values_list("kind", "value"))
    assert kinds == {("anonymous_id", "anon-1"), ("user_id", "user-1"), ("email", "ana.silva@example.com")}


def test_two_known_profiles_merge_with_the_written_rules(ws):
    # Profile A: known by email from a form on one browser, with consent and an early paid touch.
    send(ws, [
        {"type": "identify", "anonymousId": "browser-a", "timestamp": at(0),
         "traits": {"email": "bo@acme.example", "title": "Analyst", "plan": "free"},
         "context": {"campaign": {"source": "linkedin", "medium": "paid-social"},
                     "page": {"url": "https://acme.test/lp"}}},
        {"type": "track", "anonymousId": "browser-a", "event": "Form Submitted", "timestamp": at(1),
         "properties": {"form_slug": "demo", "consent": {"topic": "marketing", "granted": True,
                                                          "wording": "Yes, email me"}},
         "context": {"traits": {"email": "bo@acme.example"}}},
    ])
    # Profile B: the product's user, a later touch, a newer title, an older plan value.
    send(ws, [
        {"type": "identify", "userId": "u-42", "timestamp": at(30),
         "traits": {"title": "Head of Analytics", "company": "Acme"},
         "context": {"page": {"url": "https://app.acme.test/", "referrer": "https://www.google.com/"}}},
    ])
    assert Contact.objects.count() == 2
    a = contact_get_by_identity(workspace=ws.workspace, kind="email", value="bo@acme.example")
    b = contact_get_by_identity(workspace=ws.workspace, kind="user_id", value="u-42")
    # The product tells us user u-42 has that email: same person.
    send(ws, [{"type": "identify", "userId": "u-42", "timestamp": at(40), "traits": {"email": "bo@acme.example"}}])
    contact = Contact.objects.get()
    assert contact.pk == b.pk, "the profile with a userId survives"
    assert contact.events.exclude(event="Lifecycle Stage Changed").count() == 4
    assert contact.title == "Head of Analytics"  # newest non-empty wins
    assert contact.traits["plan"] == "free"  # only A had it: kept
    assert contact.first_touch["channel"] == "paid_social"  # earliest first touch wins
    assert contact.company.name == "Acme"
    assert ConsentRecord.objects.get().contact_id == contact.pk  # consent moved, not lost
    merge = ContactMerge.objects.get()
    assert merge.loser_id == a.pk and merge.winner_id == contact.pk
    assert merge.loser_snapshot["email"] == "bo@acme.example"
    # two events sent and its `Lifecycle Stage Changed` (→ lead)
    assert merge.moved["tracking.event"] == 3 and merge.moved["consent.consentrecord"] == 1
    assert contact_get(workspace=ws.workspace, contact_id=a.pk) == contact


def test_merge_chain_is_followed(ws):
    send(ws, [{"type": "page", "anonymousId": f"a{n}", "timestamp": at(n)} for n in range(3)])
    first, second, third = Contact.objects.order_by("pk")
    first_id = first.pk
    contact_merge(winner=second, loser=first, reason="manual")
    contact_merge(winner=third, loser=second, reason="manual")
    assert contact_get(workspace=ws.workspace, contact_id=first_id) == third
    assert third.events.count() == 3
    assert ContactMerge.objects.filter(winner=third).count() == 2  # the chain re-points to the survivor


def test_alias_joins_two_user_ids(ws):
    send(ws, [{"type": "track", "userId": "old-id", "event": "Logged In", "timestamp": at(0)},
              {"type": "track", "userId": "new-id", "event": "Logged In", "timestamp": at(1)}])
    assert Contact.objects.count() == 2
    send(ws, [{"type": "alias", "userId": "new-id", "previousId": "old-id", "timestamp": at(2)}])
    contact = Contact.objects.get()
    assert contact.user_id == "new-id" and contact.events.count() == 3
    assert set(contact.identities.filter(kind="user_id").values_list("value", flat=True)) == {"old-id", "new-id"}


def test_shared_browser_never_joins_two_users(ws):
    send(ws, [{"type": "identify", "anonymousId": "kiosk", "userId": "alice", "timestamp": at(0)}])
    send(ws, [{"type": "identify", "anonymousId": "kiosk", "userId": "bob", "timestamp": at(1),
               "traits": {"email": "bob@acme.example"}}])
    alice = contact_get_by_identity(workspace=ws.workspace, kind="user_id", value="alice")
    bob = contact_get_by_identity(workspace=ws.workspace, kind="user_id", value="bob")
    assert alice != bob
    assert contact_get_by_identity(workspace=ws.workspace, kind="anonymous_id", value="kiosk") == alice
    assert bob.email == "bob@acme.example" and bob.events.exclude(event="Lifecycle Stage Changed").count() == 1


def test_invalid_traits_are_kept_not_lost(ws):
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(0),
               "traits": {"email": "not-an-email", "phone": "12", "country": "Portugal",
                          "timezone": "Mars/Olympus", "employees": 120}}])
    c = Contact.objects.get()
    assert c.email == "" and c.traits["email_raw"] == "not-an-email"
    assert c.country == "PT" and c.phone == "" and c.traits["phone_raw"] == "12"
    assert c.traits["timezone_raw"] == "Mars/Olympus" and c.traits["employees"] == 120


def test_phone_is_e164_with_the_contacts_country(ws):
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(0),
               "traits": {"phone": "(415) 555-0132", "country": "US"}}])
    assert Contact.objects.get().phone == "+14155550132"


def test_older_event_processed_later_does_not_overwrite_newer_trait(ws):
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(10), "traits": {"plan": "pro"}}])
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(0), "traits": {"plan": "free"}}])
    assert Contact.objects.get().traits["plan"] == "pro"


def test_group_call_links_company(ws):
    send(ws, [{"type": "group", "userId": "u", "groupId": "acct-9", "timestamp": at(0),
               "traits": {"name": "  Acme   Corp ", "website": "https://www.acme.test/", "employees": 250}}])
    c = Contact.objects.get()
    assert c.company.group_id == "acct-9" and c.company.name == "Acme Corp"
    assert c.company.domain == "acme.test" and c.company.traits["employees"] == 250


def test_reprocessing_is_idempotent(ws):
    send(ws, [{"type": "page", "anonymousId": "a", "timestamp": at(0)}])
    assert process_pending() == 0
    # Re-sending the same messageId stores nothing new and changes nothing.
    events_append(workspace=ws.workspace, messages=[{"type": "page", "anonymousId": "a",
                                                     "messageId": Event.objects.get().message_id}])
    assert process_pending() == 0 and Event.objects.count() == 1


def _people_streams():
    """Streams of events from distinct people (no two people share an id): the expected profiles
    are the connected components of ids seen together."""
    person = st.fixed_dictionaries({
        "user": st.one_of(st.none(), st.just(True)),
        "anons": st.integers(1, 3),
        "emails": st.integers(0, 2),
    })
    return st.lists(person, min_size=1, max_size=4).flatmap(
        lambda people: st.tuples(st.just(people), st.lists(
            st.tuples(st.integers(0, len(people) - 1), st.integers(0, 2), st.integers(0, 2),
                      st.booleans(), st.booleans(), st.sampled_from(["page", "identify", "track"])),
            min_size=1, max_size=25)))


def _build(people, picks):
    messages = []
    for n, (p, anon, email, use_user, use_email, kind) in enumerate(picks):
        spec = people[p]
        msg = {"type": kind, "messageId": f"m{n}", "timestamp": at(n)}
        anon_id = f"p{p}-anon{anon % spec['anons']}"
        user_id = f"p{p}-user" if spec["user"] and use_user else None
        if user_id:
            msg["userId"] = user_id
        if not user_id or n % 2:
            msg["anonymousId"] = anon_id
        if spec["emails"] and use_email:
            address = f"p{p}-{email % spec['emails']}@example.com"
            if kind == "identify":
                msg["traits"] = {"email": address}
            else:
                msg["context"] = {"traits": {"email": address}}
        if kind == "track":
            msg["event"] = "Clicked"
        messages.append(msg)
    return messages


def _expected_partition(messages):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    keys_per = []
    for m in messages:
        keys = [k for k in (m.get("userId"), m.get("anonymousId"),
                            (m.get("traits") or (m.get("context") or {}).get("traits") or {}).get("email"))
                if k]
        keys_per.append(keys)
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups = {}
    for m, keys in zip(messages, keys_per):
        groups.setdefault(find(keys[0]), set()).add(m["messageId"])
    return sorted(sorted(g) for g in groups.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=_people_streams(), batch=st.sampled_from([1, 3, 1000]))
def test_profiles_are_the_components_of_ids_seen_together(db, stream, batch):
    people, picks = stream
    keys = make_workspace(f"prop {uuid.uuid4().hex[:12]}")
    messages = _build(people, picks)
    events_append(workspace=keys.workspace, messages=messages)
    with override_settings(LEADFLOW_WORKER_BATCH=batch):
        process_pending()
    events = list(Event.objects.filter(workspace=keys.workspace).exclude(event="Lifecycle Stage Changed"))
    assert all(e.contact_id and e.processed_at for e in events), "an event was left without a profile"
    actual = {}
    for e in events:
        actual.setdefault(e.contact_id, set()).add(e.message_id)
    assert sorted(sorted(g) for g in actual.values()) == _expected_partition(messages)
    assert Contact.objects.filter(workspace=keys.workspace).count() == len(actual)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.sampled_from([None, "u1", "u2", "u3"]),
                                st.sampled_from([None, "a1", "a2", "a3"]),
                                st.sampled_from([None, "x@e.co", "y@e.co"]),
                                st.sampled_from(["identify", "track", "page", "alias"])),
                      min_size=1, max_size=30),
       batch=st.sampled_from([1, 4, 1000]))
def test_no_event_is_lost_and_every_event_sits_with_its_primary_id(db, picks, batch):
    """Any stream, including shared browsers and conflicting emails."""
    keys = make_workspace(f"any {uuid.uuid4().hex[:12]}")
    messages = []
    for n, (user, anon, email, kind) in enumerate(picks):
        if kind == "alias":
            if not user or not anon:
                continue
            messages.append({"type": "alias", "userId": user, "previousId": anon, "timestamp": at(n)})
            continue
        if not user and not anon:
            anon = "a0"
        msg = {"type": kind, "timestamp": at(n), **({"userId": user} if user else {}),
               **({"anonymousId": anon} if anon else {})}
        if email:
            msg["traits" if kind == "identify" else "context"] = (
                {"email": email} if kind == "identify" else {"traits": {"email": email}})
        if kind == "track":
            msg["event"] = "Did"
        messages.append(msg)
    if not messages:
        return
    events_append(workspace=keys.workspace, messages=messages)
    with override_settings(LEADFLOW_WORKER_BATCH=batch):
        process_pending()
    owner = {(i.kind, i.value): i.contact_id
             for i in Identity.objects.filter(workspace=keys.workspace)}
    users_of = {}
    for (kind, value), contact_id in owner.items():
        if kind == "user_id":
            users_of.setdefault(contact_id, set()).add(value)
    events = list(Event.objects.filter(workspace=keys.workspace).exclude(event="Lifecycle Stage Changed"))
    assert len(events) == len(messages)
    for event in events:
        assert event.contact_id is not None, "event lost its profile"
        ids = event_keys(event)
        assert ids, "every stored event has an id"
        assert owner[ids[0]] == event.contact_id, "event not with the owner of its primary id"
        for other in ids[1:]:
            assert other in owner, "an id seen in an event has no owner"
            if owner[other] != event.contact_id:
                # Kept apart only to avoid joining two different users.
                assert users_of.get(owner[other]) and users_of.get(event.contact_id)
    aliased = any(m["type"] == "alias" for m in messages)
    if not aliased:
        assert all(len(users) == 1 for users in users_of.values()), "two users were joined"
    assert set(owner.values()) <= set(Contact.objects.filter(workspace=keys.workspace).values_list("pk", flat=True))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_share_the_log_without_double_processing():
    keys = make_workspace("concurrency")
    messages = []
    for n in range(2000):
        person = n % 300
        msg = {"type": "track", "event": "Viewed", "anonymousId": f"a{person}", "timestamp": at(n),
               "messageId": f"m{n}"}
        if n % 7 == 0:
            msg = {"type": "identify", "anonymousId": f"a{person}", "userId": f"u{person % 150}",
                   "traits": {"email": f"p{person % 150}@example.com"}, "timestamp": at(n),
                   "messageId": f"m{n}"}
        messages.append(msg)
    for start in range(0, len(messages), 500):
        events_append(workspace=keys.workspace, messages=messages[start:start + 500])
    errors = []

    def work():
        try:
            with override_settings(LEADFLOW_WORKER_BATCH=100):
                process_pending()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not Event.objects.filter(processed_at__isnull=True).exists()
    assert not Event.objects.exclude(error="").exists()
    # No anonymous id ever meets two users here, so the outcome cannot depend on which worker
    # took which shard: the profiles are exactly the components of ids seen together.
    actual = {}
    for contact_id, message_id in Event.objects.filter(workspace=keys.workspace).exclude(
            event="Lifecycle Stage Changed").values_list("contact_id", "message_id"):
        actual.setdefault(contact_id, set()).add(message_id)
    expected = _expected_partition(messages)
    assert sorted(sorted(g) for g in actual.values()) == expected
    assert Contact.objects.filter(workspace=keys.workspace).count() == len(expected)
    assert Identity.objects.filter(workspace=keys.workspace, kind="user_id").count() == 150



def test_address_and_id_traits_are_kept_as_sent(ws):
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(0),
               "traits": {"address": "Rua Augusta 1, Lisboa", "id": "crm-77", "name": "Rita Lobo"}}])
    c = Contact.objects.get()
    assert c.traits["address"] == "Rua Augusta 1, Lisboa" and c.traits["id"] == "crm-77"
    assert (c.first_name, c.last_name) == ("Rita", "Lobo") and "name" not in c.traits
    send(ws, [{"type": "identify", "userId": "u", "timestamp": at(1),
               "traits": {"address": {"city": "Porto", "country": "Portugal"}}}])
    c.refresh_from_db()
    assert c.traits["address"] == {"city": "Porto", "country": "Portugal"} and c.country == "PT"


def test_company_traits_find_the_same_company_whatever_the_case(ws):
    send(ws, [{"type": "identify", "userId": "a", "timestamp": at(0),
               "traits": {"company": {"name": "Acme Corp", "website": "https://www.acme.example/about"}}},
              {"type": "identify", "userId": "b", "timestamp": at(1), "traits": {"company": "ACME CORP"}}])
    send(ws, [{"type": "identify", "userId": "c", "timestamp": at(2), "traits": {"company": "acme corp"}}])
    companies = {c.company_id for c in Contact.objects.all()}
    assert len(companies) == 1
    assert Contact.objects.first().company.domain == "acme.example"


def test_browser_timezone_fills_an_empty_timezone_only(ws):
    send(ws, [{"type": "page", "anonymousId": "v", "timestamp": at(0),
               "context": {"timezone": "Europe/Lisbon", "page": {"url": "https://acme.example/"}}}])
    assert Contact.objects.get().timezone == "Europe/Lisbon"
    send(ws, [{"type": "identify", "anonymousId": "v", "timestamp": at(1), "traits": {"timezone": "America/New_York"}},
              {"type": "page", "anonymousId": "v", "timestamp": at(2), "context": {"timezone": "Asia/Tokyo"}}])
    assert Contact.objects.get().timezone == "America/New_York"
