"""The identity and profile processor: the first stage of the pipeline.

It takes a batch of events from the log (in id order), resolves each to exactly one contact
(linking anonymous ids, user ids and emails, and merging profiles that turn out to be one person),
then derives the profile: traits, company, first and latest touch, consent from forms, first and
last seen. Everything happens in one transaction per batch, so a crash leaves the batch to be
done again from the start and no event is ever half-applied.

Identity rules (docs/architecture.md):
- An event's keys are its userId, the email in its traits (or context.traits) and its anonymousId.
- Keys seen together belong to one person, except that two different userIds never join
  (a shared browser): the anonymous id or email stays with the profile that had it first.
  An `alias` call joins them on purpose.
- When keys of two profiles join, they merge; the survivor is the one with a userId, then with an
  email, then the oldest.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict

import orjson
from django.db import connection
from django.db.models import Q
from django.db.models.functions import Lower

from leadflow.contacts import hygiene
from leadflow.contacts.models import Company, Contact, Identity
from leadflow.contacts.services import contact_merge, touch_record
from leadflow.contacts.traits import traits_apply
from leadflow.core import clock
from leadflow.tracking.magnet_delivery import REQUEST_EVENTS, magnet_deliveries_queue

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (kind, value)


def event_email(event) -> str:
    traits = event.traits if event.type == "identify" else {}
    context_traits = event.context.get("traits") if isinstance(event.context.get("traits"), dict) else {}
    raw = traits.get("email") or context_traits.get("email")
    if not raw:
        return ""
    try:
        return hygiene.email_normalize(raw)
    except hygiene.HygieneError:
        return ""


def event_keys(event) -> list[Key]:
    keys: list[Key] = []
    if event.user_id:
        keys.append(("user_id", event.user_id))
    email = event_email(event)
    if email:
        keys.append(("email", email))
    if event.anonymous_id:
        keys.append(("anonymous_id", event.anonymous_id))
    return keys


class _Components:
    """Union-find over keys and existing contacts, refusing joins of two different userIds."""

    def __init__(self) -> None:
        self.parent: dict[tuple, tuple] = {}
        self.users: dict[tuple, frozenset[str]] = {}

    def add(self, node: tuple, users: frozenset[str] = frozenset()) -> None:
        if node not in self.parent:
            self.parent[node] = node
            self.users[node] = users

    def find(self, node: tuple) -> tuple:
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def union(self, a: tuple, b: tuple, *, force: bool = False) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        ua, ub = self.users[ra], self.users[rb]
        if not force and ua and ub and not (ua & ub):
            return False
        self.parent[rb] = ra
        self.users[ra] = ua | ub
        return True


def _winner_order(contact: Contact):
    return (not contact.user_id, not contact.email, contact.created_at, contact.pk)


def _touch_for(event) -> dict:
    from leadflow.tracking.sources import touch_from_context

    at = event.timestamp.isoformat()
    context = event.context if isinstance(event.context, dict) else {}
    leadflow_ctx = context.get("leadflow") if isinstance(context.get("leadflow"), dict) else {}
    import_label = str(leadflow_ctx.get("import") or "")
    form = str(event.properties.get("form_slug") or "") if event.event == "Form Submitted" else ""
    has_web = isinstance(context.get("page"), dict) or isinstance(context.get("campaign"), dict)
    if import_label or form or has_web or event.type == "page":
        return touch_from_context(context, at=at, origin="import" if import_label else "",
                                  form=form, import_label=import_label)
    library = context.get("library") if isinstance(context.get("library"), dict) else {}
    return {"channel": "other", "origin": "api", "library": str(library.get("name") or ""),
            "at": at, "informative": False}


def _lock_owners(workspace_id: int, query: Q | None) -> tuple[dict[Key, int], dict[int, Contact]]:
    """The identities among `query` and their contacts, row-locked.

    Another worker may merge (and delete) a contact between reading an identity and locking its
    contact, so identities are read again once the locks are held, until both agree. Locks are
    taken in id order, so two workers never wait on each other in a cycle.
    """
    contacts: dict[int, Contact] = {}
    if query is None:
        return {}, contacts
    locked: set[int] = set()
    while True:
        existing = {(kind, value): contact_id for kind, value, contact_id in
                    Identity.objects.filter(query, workspace_id=workspace_id)
                    .values_list("kind", "value", "contact_id")}
        wanted_ids = set(existing.values())
        if wanted_ids <= locked:
            return existing, {pk: c for pk, c in contacts.items() if pk in wanted_ids}
        for contact in (Contact.objects.select_for_update().filter(pk__in=wanted_ids - locked)
                        .order_by("pk")):
            contacts[contact.pk] = contact
        locked |= wanted_ids


def process_events(events: list) -> int:
    """Resolve and apply a batch of events (call inside a transaction). Returns events done."""
    by_workspace: dict[int, list] = defaultdict(list)
    for event in events:
        by_workspace[event.workspace_id].append(event)
    now = clock.now()
    for workspace_id, group in by_workspace.items():
        _process_workspace(workspace_id, sorted(group, key=lambda e: e.id), now)
    return len(events)


def _process_workspace(workspace_id: int, events: list, now: dt.datetime) -> None:
    from leadflow.consent.models import ConsentRecord
    from leadflow.tracking.models import Event

    keys_of = {event.id: event_keys(event) for event in events}
    wanted: dict[str, set[str]] = defaultdict(set)
    for keys in keys_of.values():
        for kind, value in keys:
            wanted[kind].add(value)
    for event in events:
        if event.type == "alias":
            wanted["user_id"].add(event.previous_id)
            wanted["anonymous_id"].add(event.previous_id)
    query = Q()
    for kind, values in wanted.items():
        query |= Q(kind=kind, value__in=values)
    existing, contacts = _lock_owners(workspace_id, query if wanted else None)

    comps = _Components()
    for contact in contacts.values():
        comps.add(("c", contact.pk), frozenset([contact.user_id]) if contact.user_id else frozenset())
    for key, contact_id in existing.items():
        node = ("k", *key)
        comps.add(node, frozenset([key[1]]) if key[0] == "user_id" else frozenset())
        comps.union(("c", contact_id), node, force=True)

    primary_of: dict[int, tuple] = {}
    refused = 0
    for event in events:
        nodes = [("k", *key) for key in keys_of[event.id]]
        for node in nodes:
            comps.add(node, frozenset([node[2]]) if node[1] == "user_id" else frozenset())
        primary = nodes[0]
        for node in nodes[1:]:
            if not comps.union(primary, node):
                refused += 1
        if event.type == "alias":
            prev = ("user_id", event.previous_id)
            if prev not in existing:
                prev = ("anonymous_id", event.previous_id)
            prev_node = ("k", *prev)
            comps.add(prev_node, frozenset([prev[1]]) if prev[0] == "user_id" else frozenset())
            comps.union(primary, prev_node, force=True)
        primary_of[event.id] = primary
    if refused:
        log.info("kept %d identities apart: they would have joined two different userIds", refused)

    # Group nodes by component.
    members: dict[tuple, list[tuple]] = defaultdict(list)
    for node in list(comps.parent):
        members[comps.find(node)].append(node)
    events_of: dict[tuple, list] = defaultdict(list)
    for event in events:
        events_of[comps.find(primary_of[event.id])].append(event)

    owner: dict[tuple, Contact] = {}
    new_contacts: list[Contact] = []
    for root, nodes in members.items():
        found = sorted((contacts[n[1]] for n in nodes if n[0] == "c"), key=_winner_order)
        if found:
            winner = found[0]
            for loser in found[1:]:
                contact_merge(winner=winner, loser=loser, reason="identity: same person")
                contacts.pop(loser.pk, None)
            owner[root] = winner
        elif events_of.get(root):
            first = min(e.timestamp for e in events_of[root])
            contact = Contact(workspace_id=workspace_id, created_at=min(first, now), updated_at=now)
            new_contacts.append(contact)
            owner[root] = contact
    if new_contacts:
        Contact.objects.bulk_create(new_contacts)

    new_identities = []
    for root, nodes in members.items():
        contact = owner.get(root)
        if contact is None:
            continue
        for node in nodes:
            if node[0] == "k" and (node[1], node[2]) not in existing:
                new_identities.append(Identity(workspace_id=workspace_id, contact=contact,
                                               kind=node[1], value=node[2], created_at=now))
                if node[1] == "email" and not contact.email:
                    contact.email = node[2]
                if node[1] == "user_id" and not contact.user_id:
                    contact.user_id = node[2]
    if new_identities:
        # Inserted in key order so that two workers adding overlapping keys wait for each other
        # instead of deadlocking; the loser then retries its batch and finds the keys.
        new_identities.sort(key=lambda i: (i.kind, i.value))
        Identity.objects.bulk_create(new_identities)

    companies = _CompanyCache(workspace_id, events, now)
    consents = []
    magnet_requests = []
    changed: dict[int, Contact] = {}
    for event in events:
        root = comps.find(primary_of[event.id])
        contact = owner[root]
        event.contact = contact
        event.processed_at = now
        changed[contact.pk] = contact
        at = event.timestamp.isoformat()
        email = event_email(event)
        email_owned = bool(email) and comps.find(("k", "email", email)) == root
        if event.type == "identify":
            traits_apply(contact, event.traits, at=at, email_owned=email_owned)
        context_traits = event.context.get("traits")
        if isinstance(context_traits, dict) and context_traits:
            traits_apply(contact, context_traits, at=at, email_owned=email_owned)
        if event.type == "alias":
            contact.user_id = event.user_id
        if not contact.timezone and isinstance(event.context.get("timezone"), str):
            try:
                contact.timezone = hygiene.timezone_normalize(event.context["timezone"])
            except hygiene.HygieneError:
                pass  # a browser's odd value; the contact's traits may still set one
        company = companies.for_event(event)
        if company is not None:
            contact.company = company
        touch_record(contact, _touch_for(event))
        if contact.first_seen_at is None or event.timestamp < contact.first_seen_at:
            contact.first_seen_at = event.timestamp
        if contact.last_seen_at is None or event.timestamp > contact.last_seen_at:
            contact.last_seen_at = event.timestamp
        contact.updated_at = now
        consent = event.properties.get("consent") if event.event == "Form Submitted" else None
        if isinstance(consent, dict) and consent.get("topic"):
            consents.append(ConsentRecord(
                workspace_id=workspace_id, contact=contact, topic=str(consent["topic"])[:100],
                status="granted" if consent.get("granted") else "withdrawn",
                wording=str(consent.get("wording") or ""),
                source=f"form:{event.properties.get('form_slug', '')}",
                ip=event.context.get("ip") or None,
                user_agent=str(event.context.get("userAgent") or "")[:500],
                event_message_id=event.message_id, at=event.timestamp))
        if event.event in REQUEST_EVENTS:
            magnet_requests.append((contact, event))

    rows_update(
        Contact, list(changed.values()),
        ["email", "user_id", "first_name", "last_name", "phone", "title", "country", "timezone",
         "traits", "trait_times", "company", "first_touch", "latest_touch", "source_channel",
         "first_seen_at", "last_seen_at", "updated_at", "created_at"],
    )
    rows_update(Event, events, ["contact", "processed_at"])
    if consents:
        # Stored once per event and topic; a grant that needs double opt-in becomes a request.
        from leadflow.consent.services import form_consents_record

        form_consents_record(records=consents)
    if magnet_requests:
        # The download link by email, once per request (transactional: no marketing consent needed).
        magnet_deliveries_queue(workspace_id=workspace_id, requests=magnet_requests)


_JSON_SAFE_TYPES = {"AutoField", "BigAutoField", "BigIntegerField", "BooleanField", "CharField",
                    "DateTimeField", "ForeignKey", "IntegerField", "JSONField", "PositiveBigIntegerField",
                    "PositiveIntegerField", "PositiveSmallIntegerField", "SmallIntegerField", "TextField"}


def rows_insert_pg(model, columns: tuple[str, ...], rows: list[dict], *, returning: bool = False) -> list[int]:
    """PostgreSQL: insert `rows` (dicts by column name, values orjson can write) into `model`'s
    table as one JSON parameter, `INSERT … SELECT … FROM jsonb_populate_recordset(…)`, 1,000 rows
    per statement. Django's bulk insert sends one array per column and psycopg quotes every
    element in Python; this sends one string. Returns the new ids, in order, with `returning`."""
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    names = ", ".join(ops.quote_name(c) for c in columns)
    sql = (f"INSERT INTO {table} ({names}) SELECT {names} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb)"
           + (f" RETURNING {ops.quote_name(model._meta.pk.column)}" if returning else ""))
    ids: list[int] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), 1000):
            cursor.execute(sql, [orjson.dumps(rows[start:start + 1000], option=orjson.OPT_NAIVE_UTC
                                              | orjson.OPT_NON_STR_KEYS).decode()])
            if returning:
                ids.extend(pk for (pk,) in cursor.fetchall())
    return ids


def rows_update(model, objs: list, field_names: list[str]) -> None:
    """Write `field_names` of `objs` back in one statement per 1,000 rows, like `bulk_update`.

    Django's `bulk_update` builds a `CASE WHEN id = … THEN …` expression per field and row, which
    cost more than all the rest of a batch (docs/benchmarks.md). On PostgreSQL this is one
    `UPDATE … FROM jsonb_populate_recordset(…)` with the rows sent as one JSON parameter; on SQLite
    one prepared `UPDATE … WHERE id = ?` run through `executemany`. Same values, same rows.
    """
    if not objs:
        return
    fields = [model._meta.get_field(name) for name in field_names]
    pk = model._meta.pk
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    if connection.vendor == "postgresql" and all(f.get_internal_type() in _JSON_SAFE_TYPES for f in fields):
        sets = ", ".join(f"{ops.quote_name(f.column)} = v.{ops.quote_name(f.column)}" for f in fields)
        sql = (f"UPDATE {table} AS t SET {sets} FROM jsonb_populate_recordset(NULL::{table}, %s::jsonb) AS v "
               f"WHERE t.{ops.quote_name(pk.column)} = v.{ops.quote_name(pk.column)}")
        columns = [(f.column, f.attname) for f in fields]
        with connection.cursor() as cursor:
            for start in range(0, len(objs), 1000):
                payload = [{pk.column: obj.pk, **{column: getattr(obj, attname) for column, attname in columns}}
                           for obj in objs[start:start + 1000]]
                cursor.execute(sql, [orjson.dumps(payload, option=orjson.OPT_NAIVE_UTC).decode()])
        return
    if connection.vendor == "sqlite":
        sets = ", ".join(f"{ops.quote_name(f.column)} = %s" for f in fields)
        sql = f"UPDATE {table} SET {sets} WHERE {ops.quote_name(pk.column)} = %s"
        with connection.cursor() as cursor:
            cursor.executemany(sql, [[f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields] +
                                     [obj.pk] for obj in objs])
        return
    model.objects.bulk_update(objs, field_names, batch_size=500)


class _CompanyCache:
    """Companies named by the batch's group calls and company traits, loaded in two queries."""

    def __init__(self, workspace_id: int, events: list, now: dt.datetime):
        self.workspace_id = workspace_id
        self.now = now
        group_ids = {e.group_id for e in events if e.type == "group"}
        names = set()
        for e in events:
            value = e.traits.get("company") if e.type == "identify" else None
            name = value.get("name") if isinstance(value, dict) else value
            if isinstance(name, str) and hygiene.company_normalize(name):
                names.add(hygiene.company_normalize(name))
        self.by_group = {c.group_id: c for c in Company.objects.filter(
            workspace_id=workspace_id, group_id__in=group_ids)} if group_ids else {}
        self.by_name = {}
        if names:
            for c in (Company.objects.annotate(lower_name=Lower("name"))
                      .filter(workspace_id=workspace_id, lower_name__in={n.lower() for n in names})
                      .order_by("pk")):
                self.by_name.setdefault(c.name.lower(), c)

    def for_event(self, event) -> Company | None:
        if event.type == "group":
            company = self.by_group.get(event.group_id)
            traits = event.traits
            name = hygiene.company_normalize(traits.get("name") or "")
            if company is None:
                company = Company.objects.create(workspace_id=self.workspace_id, group_id=event.group_id,
                                                 name=name, created_at=self.now, updated_at=self.now)
                self.by_group[event.group_id] = company
            self._update(company, traits, name)
            return company
        if event.type != "identify":
            return None
        value = event.traits.get("company")
        traits = value if isinstance(value, dict) else {}
        name = hygiene.company_normalize(traits.get("name") if traits else value) if value else ""
        if not name:
            return None
        company = self.by_name.get(name.lower())
        if company is None:
            company = Company.objects.create(workspace_id=self.workspace_id, name=name,
                                             created_at=self.now, updated_at=self.now)
            self.by_name[name.lower()] = company
        self._update(company, traits, name)
        return company

    def _update(self, company: Company, traits: dict, name: str) -> None:
        extra = {k: v for k, v in traits.items() if k not in ("name", "id") and v not in (None, "")}
        try:
            domain = hygiene.domain_normalize(traits.get("domain") or traits.get("website") or "")
        except hygiene.HygieneError:
            domain = ""  # the raw value stays in the company's traits
        dirty = False
        if name and company.name != name:
            company.name, dirty = name, True
        if domain and company.domain != domain:
            company.domain, dirty = domain, True
        if extra and any(company.traits.get(k) != v for k, v in extra.items()):
            company.traits = {**company.traits, **extra}
            dirty = True
        if dirty:
            company.updated_at = self.now
            company.save(update_fields=["name", "domain", "traits", "updated_at"])
