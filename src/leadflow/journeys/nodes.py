"""What each node type does to the group of enrollments at it, in one set-based go.

A handler gets the pass (`engine.Pass`), the node and the enrollments due at it (all of one
journey version). It moves each one on (`p.go`), parks it (`p.wait`) or ends it (`p.end`), and
writes its effects with one statement per group: messages through the outbox, webhook deliveries,
profile changes. Effects carry `engine.dedupe_key`, so a pass redone after a crash finds them
already there.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from leadflow.contacts.models import Contact
from leadflow.contacts.processing import rows_update
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys.engine import ARRIVE, EVENT, Pass, dedupe_key, next_local, stable_fraction
from leadflow.journeys.models import Enrollment, EnrollmentState, StepKind

WEEKDAY_NUMBERS = {name: i for i, name in enumerate(lang.WEEKDAYS)}


def _arriving(enrollments: list[Enrollment]) -> tuple[list[Enrollment], list[Enrollment]]:
    """(those arriving at a wait node now, those whose wait there is over)."""
    arriving = [e for e in enrollments if e.resume == ARRIVE]
    return arriving, [e for e in enrollments if e.resume != ARRIVE]


def _matching(p: Pass, flt, contact_ids: list[int]) -> set[int]:
    """Which of `contact_ids` match a segment filter now (one query)."""
    from leadflow.segments.compiler import filter_q

    if not contact_ids:
        return set()
    condition = filter_q(flt, workspace_id=p.journey.workspace_id, now=p.now)
    return set(Contact.objects.filter(workspace_id=p.journey.workspace_id, pk__in=contact_ids)
               .filter(condition).values_list("pk", flat=True))


def _rules(p: Pass):
    from leadflow.consent.gate import _rules_load

    cache = p.__dict__.setdefault("_rules", {})
    workspace_id = p.journey.workspace_id
    if workspace_id not in cache:
        cache[workspace_id] = _rules_load({workspace_id})[workspace_id]
    return cache[workspace_id]


def _zone(p: Pass, contact: Contact):
    from leadflow.journeys.engine import contact_zone_of

    return contact_zone_of(contact, _rules(p))


# --- waits ----------------------------------------------------------------------------------

def wait(p: Pass, node: lang.WaitNode, enrollments: list[Enrollment]) -> None:
    arriving, done = _arriving(enrollments)
    for e in arriving:
        p.wait(e, p.now + node.duration)
    for e in done:
        p.go(e, node.next)


def wait_until(p: Pass, node: lang.WaitUntilNode, enrollments: list[Enrollment]) -> None:
    arriving, done = _arriving(enrollments)
    days = {WEEKDAY_NUMBERS[d] for d in node.weekdays} or None
    at = lang.time_of(node.time)
    for e in arriving:
        p.wait(e, next_local(p.now, at, days, _zone(p, p.contacts[e.contact_id])))
    for e in done:
        p.go(e, node.next)


def date_trait_value(contact: Contact, trait: str) -> dt.date | None:
    """A date trait as a date: an ISO date or date-time string (the day it names in UTC)."""
    value = (contact.traits or {}).get(trait)
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        if len(value) == 10:
            return dt.date.fromisoformat(value)
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment.astimezone(dt.timezone.utc) if moment.tzinfo else moment).date()


def wait_for_date(p: Pass, node: lang.WaitForDateNode, enrollments: list[Enrollment]) -> None:
    arriving, done = _arriving(enrollments)
    at = lang.time_of(node.time)
    for e in arriving:
        contact = p.contacts[e.contact_id]
        day = date_trait_value(contact, node.date_trait)
        if day is None:
            p.go(e, node.missing_next or node.next, detail="date missing")
            continue
        zone = _zone(p, contact)
        target = dt.datetime.combine(day + dt.timedelta(days=node.offset_days), at).replace(tzinfo=zone)
        target = target.astimezone(dt.timezone.utc)
        if target <= p.now:
            p.go(e, node.next, detail="date already past")
        else:
            p.wait(e, target)
    for e in done:
        p.go(e, node.next)


def wait_for_event(p: Pass, node: lang.WaitForEventNode, enrollments: list[Enrollment]) -> None:
    arriving, done = _arriving(enrollments)
    for e in arriving:
        p.wait(e, p.now + dt.timedelta(days=node.timeout_days), event=node.event)
    for e in done:
        if e.resume == EVENT:
            p.go(e, node.next, outcome="event")
        else:
            p.go(e, node.timeout_next, outcome="timeout")


def holdout(p: Pass, node: lang.HoldoutNode, enrollments: list[Enrollment]) -> None:
    arriving, done = _arriving(enrollments)
    for e in arriving:
        if stable_fraction(e.journey_id, e.contact_id, e.entry_key, node.id) * 100 < node.percent:
            e.group = "holdout"
            p.step(e, StepKind.WAITING, group="holdout")
            p.wait(e, p.now + dt.timedelta(days=node.days))
        else:
            p.go(e, node.next, group="treated")
    for e in done:
        p.end(e, EnrollmentState.COMPLETED, "held out: the observation period is over", StepKind.COMPLETED)


# --- branches -------------------------------------------------------------------------------

def branch(p: Pass, node: lang.BranchNode, enrollments: list[Enrollment]) -> None:
    yes = _matching(p, node.if_.flt, [e.contact_id for e in enrollments])
    for e in enrollments:
        matched = e.contact_id in yes
        p.go(e, node.yes if matched else node.no, outcome="yes" if matched else "no")


def field_value(contact: Contact, name: str):
    """The value of a filter-language field for a contact (as a switch compares it)."""
    from leadflow.segments.language import field_spec

    spec = field_spec(name)
    if spec.on == "company":
        company = contact.company
        if company is None:
            return None
        source = company.traits if spec.kind == "json" else getattr(company, spec.column)
    elif spec.kind == "json":
        source = getattr(contact, spec.column)
    elif spec.column == "owner_id" or spec.kind == "owner":
        return contact.owner_id
    else:
        return getattr(contact, spec.column)
    if spec.kind == "json":
        for key in spec.keys:
            source = source.get(key) if isinstance(source, dict) else None
    return source


def _same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def switch(p: Pass, node: lang.SwitchNode, enrollments: list[Enrollment]) -> None:
    for e in enrollments:
        value = field_value(p.contacts[e.contact_id], node.field)
        for i, case in enumerate(node.cases):
            if any(_same(value, wanted) for wanted in case.equals):
                p.go(e, case.next, outcome=f"case {i + 1}")
                break
        else:
            p.go(e, node.default, outcome="default")


def random_split(p: Pass, node: lang.RandomNode, enrollments: list[Enrollment]) -> None:
    for e in enrollments:
        x = stable_fraction(e.journey_id, e.contact_id, e.entry_key, node.id) * 100
        edge = 0.0
        for i, path in enumerate(node.paths):
            edge += path.percent
            if x < edge or i == len(node.paths) - 1:
                p.go(e, path.next, outcome=path.name or f"path {i + 1}")
                break


# --- sends ----------------------------------------------------------------------------------

def _capped(p: Pass, contact_ids: list[int]) -> dict[int, dt.datetime]:
    """Contacts the journey's own cap holds back, with when they are free again."""
    from leadflow.consent.gate import cap_free_at
    from leadflow.messaging.models import Message

    cap = p.definition.cap
    if cap is None or not contact_ids:
        return {}
    window = dt.timedelta(days=cap.days)
    sent: dict[int, list[dt.datetime]] = defaultdict(list)
    for contact_id, at in (Message.objects.filter(workspace_id=p.journey.workspace_id, contact_id__in=contact_ids,
                                                  source__startswith=f"journey:{p.journey.pk}:",
                                                  queued_at__gt=p.now - window)
                           .exclude(status__in=["blocked", "failed"]).values_list("contact_id", "queued_at")):
        sent[contact_id].append(at)
    held = {}
    for contact_id, times in sent.items():
        free = cap_free_at(sorted(times), cap.emails, window, p.now)
        if free > p.now:
            held[contact_id] = free
    return held


def _template(p: Pass, slug: str):
    from leadflow.messaging.models import Template

    cache = p.__dict__.setdefault("_templates", {})
    if slug not in cache:
        cache[slug] = (Template.objects.filter(workspace_id=p.journey.workspace_id, slug=slug)
                       .select_related("approved_version").first())
    template = cache[slug]
    if template is None:
        raise ServiceError(f"there is no email template {slug!r}")
    if template.approved_version_id is None:
        raise ServiceError(f"template {slug!r} has no approved version to send")
    return template


def _server_id(p: Pass, name: str | None) -> int | None:
    from leadflow.messaging.models import SendingServer

    if name is None:
        return None
    server = SendingServer.objects.filter(workspace_id=p.journey.workspace_id, name=name).first()
    if server is None:
        raise ServiceError(f"there is no sending server {name!r}")
    return server.pk


def queue_emails(p: Pass, node_id: str, items: list[tuple[Enrollment, object]], *, topic: str | None,
                 server: str | None) -> None:
    """Queue one email per (enrollment, template) through the outbox, with the journey's cap."""
    from leadflow.messaging.outbox import messages_queue_many

    held = _capped(p, [e.contact_id for e, _ in items])
    contacts = p.contacts.addresses([e.contact_id for e, _ in items if e.contact_id not in held])
    by_template = defaultdict(list)
    for e, template in items:
        if e.contact_id in held:
            p.step(e, StepKind.WAITING, reason="journey cap", until=held[e.contact_id].isoformat())
            e.due_at = held[e.contact_id]  # stays at the node, arriving again when the cap frees
            continue
        contact = contacts[e.contact_id]
        if not contact.email.strip():
            p.go(e, _next_of(p, node_id), kind=StepKind.SKIPPED, reason="no email address")
            continue
        by_template[template.pk].append((e, template))
    server_id = _server_id(p, server)
    for pairs in by_template.values():
        template = pairs[0][1]
        rows = [(contacts[e.contact_id], dedupe_key(e, node_id),
                 {"journey": p.journey.slug, "event": e.data.get("event", {})}) for e, _ in pairs]
        ids = messages_queue_many(workspace_id=p.journey.workspace_id, rows=rows, template=template,
                                  version=template.approved_version, topic=topic,
                                  source=f"journey:{p.journey.pk}:{node_id}", campaign=p.journey.slug,
                                  server_id=server_id, now=p.now)
        for (e, _), message_id in zip(pairs, ids):
            p.go(e, _next_of(p, node_id), kind=StepKind.SENT, message=message_id, template=template.slug)


def _next_of(p: Pass, node_id: str) -> str | None:
    return getattr(p.definition.node(node_id), "next", None)


def send_email(p: Pass, node: lang.SendEmailNode, enrollments: list[Enrollment]) -> None:
    template = _template(p, node.template)
    queue_emails(p, node.id, [(e, template) for e in enrollments], topic=node.topic, server=node.server)


# --- other actions --------------------------------------------------------------------------

def _locked_contacts(p: Pass, enrollments: list[Enrollment]) -> list[Contact]:
    """The contacts of `enrollments`, locked and fresh (another worker may be changing them)."""
    ids = sorted({e.contact_id for e in enrollments})
    fresh = Contact.objects.select_for_update(of=("self",)).select_related("company").in_bulk(ids)
    p.contacts.update(fresh)
    return [fresh[i] for i in ids if i in fresh]


def _segments_follow(p: Pass, contacts: list[Contact]) -> None:
    """After a profile change, segment membership follows at once (entries and exits recorded)."""
    from leadflow.segments.membership import contacts_reevaluate

    if contacts:
        contacts_reevaluate(workspace_id=p.journey.workspace_id, contact_ids=[c.pk for c in contacts], now=p.now)


def update_traits(p: Pass, node: lang.UpdateTraitsNode, enrollments: list[Enrollment]) -> None:
    contacts = _locked_contacts(p, enrollments)
    stamp = p.now.isoformat()
    for c in contacts:
        c.traits = {**(c.traits or {}), **node.traits}
        c.trait_times = {**(c.trait_times or {}), **{k: stamp for k in node.traits}}
        c.updated_at = p.now
    rows_update(Contact, contacts, ["traits", "trait_times", "updated_at"])
    _segments_follow(p, contacts)
    for e in enrollments:
        p.go(e, node.next, traits=sorted(node.traits))


def tag(p: Pass, node: lang.TagNode, enrollments: list[Enrollment]) -> None:
    contacts = _locked_contacts(p, enrollments)
    for c in contacts:
        current = (c.traits or {}).get("tags")
        tags = [t for t in current if isinstance(t, str)] if isinstance(current, list) else []
        tags = [t for t in tags if t not in node.remove] + [t for t in node.add if t not in tags]
        c.traits = {**(c.traits or {}), "tags": tags}
        c.updated_at = p.now
    rows_update(Contact, contacts, ["traits", "updated_at"])
    _segments_follow(p, contacts)
    for e in enrollments:
        p.go(e, node.next, added=node.add, removed=node.remove)


def static_list(p: Pass, node: lang.ListNode, enrollments: list[Enrollment]) -> None:
    from leadflow.segments.membership import members_change_by_hand
    from leadflow.segments.models import Segment

    slug = node.add or node.remove
    segment = Segment.objects.filter(workspace_id=p.journey.workspace_id, slug=slug).first()
    if segment is None:
        raise ServiceError(f"there is no list {slug!r}")
    ids = sorted({e.contact_id for e in enrollments})
    members_change_by_hand(segment=segment, add=ids if node.add else (), remove=ids if node.remove else (), now=p.now)
    for e in enrollments:
        p.go(e, node.next, list=slug)


def score(p: Pass, node: lang.ScoreNode, enrollments: list[Enrollment]) -> None:
    contacts = _locked_contacts(p, enrollments)
    for c in contacts:
        c.engagement_score = max(0.0, (c.engagement_score or 0.0) + node.points)
        c.updated_at = p.now
    rows_update(Contact, contacts, ["engagement_score", "updated_at"])
    _segments_follow(p, contacts)
    if contacts:
        # Score triggers of live journeys, once this pass's enrollments are written (so the
        # re-entry policy reads where everyone of the pass now stands).
        from leadflow.journeys.triggers import thresholds_follow

        workspace_id, ids, now = p.journey.workspace_id, [c.pk for c in contacts], p.now
        p.after.append(lambda: thresholds_follow(workspace_id=workspace_id, contact_ids=ids, now=now))
    for e in enrollments:
        p.go(e, node.next, points=node.points)


def stage(p: Pass, node: lang.StageNode, enrollments: list[Enrollment]) -> None:
    from leadflow.lifecycle import rules
    from leadflow.lifecycle.services import Transition, _order, transitions_apply

    order = _order(p.journey.workspace_id)
    contacts = _locked_contacts(p, enrollments)
    moves = []
    for c in contacts:
        if c.lifecycle_stage == node.to:
            continue
        if not rules.explicit_move_allowed(order, c.lifecycle_stage, node.to):
            raise ServiceError(f"unknown stage {node.to!r}")
        moves.append(Transition(c, node.to, f"journey {p.journey.slug}", f"journey:{p.journey.slug}"))
    if moves:
        transitions_apply(workspace_id=p.journey.workspace_id, transitions=moves, now=p.now)
        _segments_follow(p, [t.contact for t in moves])
    for e in enrollments:
        p.go(e, node.next, to=node.to)


# A lead nobody can take waits at its sales alert step and routing is tried again: after a
# minute, then twice as long each time, at most every ROUTE_RETRY_MAX (MQLs nobody can take are
# routed again every minute by the lifecycle timers).
ROUTE_RETRY_FIRST = dt.timedelta(minutes=1)
ROUTE_RETRY_MAX = dt.timedelta(minutes=15)


def route_retry_after(tries: int) -> dt.timedelta:
    return min(ROUTE_RETRY_MAX, ROUTE_RETRY_FIRST * 2 ** min(tries, 16))


def sales_alert(p: Pass, node: lang.SalesAlertNode, enrollments: list[Enrollment]) -> None:
    """Hand each lead to sales and move on. A lead routing cannot give to anyone stays at the step
    (as an MQL nobody can take stays unassigned and is routed again): the history says why once,
    the enrollment keeps the reason (`data["waiting_for"]`, shown on the journey page), and the
    step is tried again later until a rep can take the lead."""
    from leadflow.journeys.actions import sales_alerts_send

    owners, gap = sales_alerts_send(p, node, enrollments)
    for e in enrollments:
        owner = owners.get(e.contact_id)
        if owner is not None:
            e.data.pop("route_tries", None)
            e.data.pop("waiting_for", None)
            p.go(e, node.next, owner=owner)
            continue
        tries = int(e.data.get("route_tries", 0))
        if e.resume == ARRIVE or e.data.get("waiting_for") != gap:
            p.step(e, StepKind.WAITING, reason=gap)
        e.data["waiting_for"] = gap
        e.data["route_tries"] = tries + 1
        p.wait(e, p.now + route_retry_after(tries))


def notify_owner(p: Pass, node: lang.NotifyOwnerNode, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys.actions import owners_notify

    notified = owners_notify(p, node, enrollments)
    for e in enrollments:
        p.go(e, node.next, notified=e.contact_id in notified)


def assign_owner(p: Pass, node: lang.AssignOwnerNode, enrollments: list[Enrollment]) -> None:
    from leadflow.lifecycle.services import user_resolve

    user = user_resolve(workspace=p.journey.workspace_id, ref=node.user)
    contacts = _locked_contacts(p, enrollments)
    for c in contacts:
        c.owner_id = user.pk
        c.updated_at = p.now
    rows_update(Contact, contacts, ["owner", "updated_at"])
    _segments_follow(p, contacts)
    for e in enrollments:
        p.go(e, node.next, owner=user.pk)


def enroll(p: Pass, node: lang.EnrollNode, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys.triggers import enroll_by_journey

    enroll_by_journey(workspace_id=p.journey.workspace_id, slug=node.journey, now=p.now,
                      entries=[(p.contacts[e.contact_id], f"j{e.journey_id}:{e.pk}:{e.steps}",
                                {"from_journey": p.journey.slug}) for e in enrollments])
    for e in enrollments:
        p.go(e, node.next, journey=node.journey)


def unenroll(p: Pass, node: lang.UnenrollNode, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys.triggers import enrollments_end

    reason = f"removed by journey {p.journey.slug}"
    ids = {e.contact_id for e in enrollments}
    # Enrollments of this pass are held in memory and written at its end: end those here.
    for other in p.batch:
        if (other.state == EnrollmentState.ACTIVE and other.contact_id in ids and other not in enrollments
                and p.journeys[other.journey_id].slug == node.journey):
            p.end(other, EnrollmentState.EXITED, reason, StepKind.EXITED)
    enrollments_end(workspace_id=p.journey.workspace_id, now=p.now, journey_slug=node.journey,
                    contact_ids=sorted(ids), state=EnrollmentState.EXITED, reason=reason,
                    exclude_ids=[e.pk for e in p.batch])
    for e in enrollments:
        p.go(e, node.next, journey=node.journey)


def exit_node(p: Pass, node: lang.ExitNode, enrollments: list[Enrollment]) -> None:
    for e in enrollments:
        p.end(e, EnrollmentState.EXITED, node.reason or f"exit at {node.id}", StepKind.EXITED)


def webhook(p: Pass, node: lang.WebhookNode, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys.webhooks import deliveries_queue

    ids = deliveries_queue(p, node, enrollments)
    for e, delivery_id in zip(enrollments, ids):
        if delivery_id is not None:  # None: skipped for consent (moved on by deliveries_queue)
            p.go(e, node.next, kind=StepKind.WEBHOOK, delivery=delivery_id)


def stream(p: Pass, node: lang.StreamNode, enrollments: list[Enrollment]) -> None:
    from leadflow.journeys.streams import stream_step

    stream_step(p, node, enrollments)


HANDLERS = {
    "wait": wait, "wait_until": wait_until, "wait_for_date": wait_for_date, "wait_for_event": wait_for_event,
    "holdout": holdout, "branch": branch, "switch": switch, "random": random_split, "send_email": send_email,
    "webhook": webhook, "update_traits": update_traits, "tag": tag, "list": static_list, "score": score,
    "stage": stage, "sales_alert": sales_alert, "notify_owner": notify_owner, "assign_owner": assign_owner,
    "enroll": enroll, "unenroll": unenroll, "exit": exit_node, "stream": stream,
}
assert set(HANDLERS) == set(lang.NODE_TYPES)
