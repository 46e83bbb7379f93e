"""Stay-in-touch streams (engagement programs): ordered pools of content that a journey's
`stream` node drips, one piece per cadence, to each person.

A stream is an ordered list of items (a template, for every role or for one). A `stream` node
names pools — the stream for each set of lifecycle stages, and a fallback without stages — a
cadence ("every 14 days on Tuesday 10:00 local") and optionally a slower one for weak
engagement. At each of a person's slots the node:

- sends them on to `next` when its `until` filter holds (one query for the group);
- else picks the pool of their stage *now* (so a stage change moves them to another stream at
  their next slot), the first item in position order for their role that they have not had,
  queues it through the outbox with the key ``stream:{stream}:{item}:{contact}``, and schedules
  the next slot;
- else marks them exhausted (``enrollment.data["exhausted"]``) and looks again at the next slot,
  so content added later reaches them at their next cadence.

"Had" is read from the outbox: a message with the item's key (or the same template sent from any
stream) exists for the person, whatever journey or version queued it. So a piece is never sent
twice to a person, and two stream nodes over the same stream (a slow path and a fast one) share
where each person stands. One query finds what a group had, one insert per template queues.

The services below write streams and their items (by hand, over the API, or from a file with
`stream_apply`), and the selectors report how many people had each item and how many are
exhausted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from typing import Annotated

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record, name_clean, slug_unique
from leadflow.journeys import language as lang
from leadflow.journeys.engine import Pass, next_local
from leadflow.journeys.models import (Enrollment, EnrollmentState, JourneyStatus, JourneyVersion, StepKind, Stream,
                                      StreamItem)

KEY_PREFIX = "stream:"
SLUG_RE = re.compile(r"\A[a-z0-9][a-z0-9\-]{0,99}\Z")
MAX_ITEMS = 500


def item_key(stream_id: int, item_id: int, contact_id: int) -> str:
    """The outbox dedupe key of one piece for one person: its existence means "had"."""
    return f"{KEY_PREFIX}{stream_id}:{item_id}:{contact_id}"


def _item_of_key(key: str) -> int | None:
    parts = key.split(":")
    return int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None


# --- cadence ------------------------------------------------------------------------------------

def _weekdays(cadence: lang.Cadence) -> set[int] | None:
    return None if cadence.weekday is None else {lang.WEEKDAYS.index(cadence.weekday)}


def slot_first(now: dt.datetime, cadence: lang.Cadence, zone) -> dt.datetime:
    """The first cadence slot (weekday and local time) strictly after `now`."""
    return next_local(now, lang.time_of(cadence.time), _weekdays(cadence), zone)


def slot_after(moment: dt.datetime, days: int, cadence: lang.Cadence, zone) -> dt.datetime:
    """The first slot on or after the local day `days` days after `moment`'s: from a Tuesday
    slot, `days=14` gives the Tuesday two weeks later at the same local time, across DST."""
    day = moment.astimezone(zone).date() + dt.timedelta(days=days)
    start = dt.datetime.combine(day, dt.time.min).replace(tzinfo=zone).astimezone(dt.timezone.utc)
    return next_local(start - dt.timedelta(microseconds=1), lang.time_of(cadence.time), _weekdays(cadence), zone)


def _every_days(node: lang.StreamNode, contact: Contact) -> int:
    """The pace for this person: the slow cadence when their engagement is below its bar."""
    if node.slow is not None and (contact.engagement_score or 0.0) < node.slow.engagement_below:
        return node.slow.every_days
    return node.cadence.every_days


# --- the stream node ----------------------------------------------------------------------------

def _pools(p: Pass, node: lang.StreamNode) -> dict[str, tuple[Stream, list[StreamItem]]]:
    """The node's streams by slug with their items in order (two queries, once per pass)."""
    cache = p.__dict__.setdefault("_streams", {})
    if node.id in cache:
        return cache[node.id]
    slugs = {pool.stream for pool in node.pools}
    streams = {s.slug: s for s in Stream.objects.filter(workspace_id=p.journey.workspace_id, slug__in=slugs)}
    missing = sorted(slugs - set(streams))
    if missing:
        raise ServiceError(f"there is no stream {missing[0]!r}")
    items: dict[int, list[StreamItem]] = defaultdict(list)
    for item in (StreamItem.objects.filter(stream__in=list(streams.values()))
                 .select_related("template__approved_version").order_by("position", "pk")):
        items[item.stream_id].append(item)
    cache[node.id] = {slug: (stream, items[stream.pk]) for slug, stream in streams.items()}
    return cache[node.id]


def pool_for(node: lang.StreamNode, stage: str) -> str | None:
    """The stream slug for a lifecycle stage: the first pool listing it, else the first pool
    without stages, else None."""
    for pool in node.pools:
        if stage and stage in pool.stages:
            return pool.stream
    return next((pool.stream for pool in node.pools if not pool.stages), None)


def _role_of(contact: Contact, trait: str) -> str:
    value = (contact.traits or {}).get(trait)
    return value.strip().casefold() if isinstance(value, str) else ""


def _sendable(item: StreamItem) -> bool:
    template = item.template
    return template.archived_at is None and template.approved_version_id is not None


def _had(workspace_id: int, contact_ids: list[int]) -> dict[int, tuple[set[int], set[int]]]:
    """contact id → (items had, templates had from any stream), read from the outbox in one query."""
    from leadflow.messaging.models import Message

    had: dict[int, tuple[set[int], set[int]]] = defaultdict(lambda: (set(), set()))
    if not contact_ids:
        return had
    rows = (Message.objects.filter(workspace_id=workspace_id, contact_id__in=contact_ids,
                                   dedupe_key__startswith=KEY_PREFIX)
            .values_list("contact_id", "dedupe_key", "template_id"))
    for contact_id, key, template_id in rows:
        items, templates = had[contact_id]
        item_id = _item_of_key(key)
        if item_id is not None:
            items.add(item_id)
        if template_id is not None:
            templates.add(template_id)
    return had


def _schedule(p: Pass, node: lang.StreamNode, e: Enrollment, days: int, zone) -> None:
    """Park `e` until its next slot: `days` after the slot that came (keeping the rhythm), or
    after now when that is already past (the engine was stopped longer than a cadence)."""
    base = e.due_at or p.now
    slot = slot_after(base, days, node.cadence, zone)
    if slot <= p.now:
        slot = slot_after(p.now, days, node.cadence, zone)
    p.wait(e, slot)


def stream_step(p: Pass, node: lang.StreamNode, enrollments: list[Enrollment]) -> None:
    """The `stream` node for a group of enrollments (see the module docstring)."""
    from leadflow.journeys.nodes import _arriving, _matching, _zone

    arriving, due = _arriving(enrollments)
    for e in arriving:
        p.wait(e, slot_first(p.now, node.cadence, _zone(p, p.contacts[e.contact_id])))
    if not due:
        return
    if node.until is not None:
        leaving = _matching(p, node.until.flt, [e.contact_id for e in due])
        for e in due:
            if e.contact_id in leaving:
                e.data.pop("exhausted", None)
                p.go(e, node.next, outcome="until")
        due = [e for e in due if e.contact_id not in leaving]
    if not due:
        return
    pools = _pools(p, node)
    had = _had(p.journey.workspace_id, sorted({e.contact_id for e in due}))
    picks: list[tuple[Enrollment, Stream, StreamItem]] = []
    for e in due:
        contact = p.contacts[e.contact_id]
        zone = _zone(p, contact)
        slug = pool_for(node, contact.lifecycle_stage)
        if slug is None:
            p.step(e, StepKind.WAITING, reason="no stream for this stage", stage=contact.lifecycle_stage)
            _schedule(p, node, e, _every_days(node, contact), zone)
            continue
        stream, items = pools[slug]
        role = _role_of(contact, node.role_trait)
        items_had, templates_had = had[e.contact_id]
        item = next((i for i in items if (not i.role or i.role.casefold() == role) and _sendable(i)
                     and i.pk not in items_had and i.template_id not in templates_had), None)
        if item is None:
            if e.data.get("exhausted") != slug:
                e.data["exhausted"] = slug
                p.step(e, StepKind.WAITING, exhausted=slug, stream=slug)
            _schedule(p, node, e, _every_days(node, contact), zone)
            continue
        picks.append((e, stream, item))
    _queue(p, node, picks)


def _queue(p: Pass, node: lang.StreamNode, picks: list[tuple[Enrollment, Stream, StreamItem]]) -> None:
    """Queue each pick through the outbox (one insert per template), with the journey's cap;
    everyone stays at the node, parked until their next slot."""
    from leadflow.journeys.nodes import _capped, _zone
    from leadflow.messaging.outbox import messages_queue_many

    held = _capped(p, [e.contact_id for e, _, _ in picks])
    by_template: dict[int, list[tuple[Enrollment, Stream, StreamItem]]] = defaultdict(list)
    for e, stream, item in picks:
        contact = p.contacts[e.contact_id]
        if e.contact_id in held:
            # The piece goes when the cap frees; the rhythm goes on from there.
            p.step(e, StepKind.WAITING, reason="journey cap", until=held[e.contact_id].isoformat())
            p.wait(e, held[e.contact_id])
            continue
        if not contact.email.strip():
            p.step(e, StepKind.SKIPPED, reason="no email address", stream=stream.slug, item=item.pk)
            _schedule(p, node, e, _every_days(node, contact), _zone(p, contact))
            continue
        by_template[item.template_id].append((e, stream, item))
    for group in by_template.values():
        template = group[0][2].template
        rows = [(p.contacts[e.contact_id], item_key(stream.pk, item.pk, e.contact_id),
                 {"journey": p.journey.slug, "stream": stream.slug, "event": e.data.get("event", {})})
                for e, stream, item in group]
        ids = messages_queue_many(workspace_id=p.journey.workspace_id, rows=rows, template=template,
                                  version=template.approved_version, topic=node.topic,
                                  source=f"journey:{p.journey.pk}:{node.id}", campaign=p.journey.slug, now=p.now)
        for (e, stream, item), message_id in zip(group, ids):
            contact = p.contacts[e.contact_id]
            days = _every_days(node, contact)
            e.data.pop("exhausted", None)
            p.step(e, StepKind.SENT, message=message_id, stream=stream.slug, item=item.pk,
                   template=template.slug, every_days=days)
            _schedule(p, node, e, days, _zone(p, contact))


# --- services -----------------------------------------------------------------------------------

def _slug_check(slug: object) -> str:
    if not isinstance(slug, str) or not SLUG_RE.match(slug):
        raise ServiceError("slug: lowercase letters, digits and hyphens, starting with a letter or digit "
                           f"(at most 100), not {slug!r}")
    return slug


def _role_clean(role: object) -> str:
    if role is None:
        return ""
    if not isinstance(role, str) or len(role.strip()) > 64:
        raise ServiceError("role: a text of at most 64 characters (empty: every role)")
    return role.strip().casefold()


def _template_check(workspace_id: int, template) -> None:
    if template is None or template.workspace_id != workspace_id:
        raise ServiceError("there is no such email template in this workspace")


def _renumber(stream: Stream) -> None:
    items = list(stream.items.order_by("position", "pk"))
    for i, item in enumerate(items, start=1):
        item.position = i
    StreamItem.objects.bulk_update(items, ["position"])


def _locked(stream: Stream) -> Stream:
    return Stream.objects.select_for_update().get(pk=stream.pk)


def stream_create(*, workspace: Workspace, name: str, actor: str, slug: str | None = None) -> Stream:
    """A new, empty stream. `slug` (what journeys name) defaults to one made from the name."""
    name = name_clean(name, what="stream")
    with transaction.atomic():
        if slug is None:
            slug = slug_unique(model=Stream, workspace_id=workspace.pk, name=name, fallback="stream")
        _slug_check(slug)
        if Stream.objects.filter(workspace=workspace, slug=slug).exists():
            raise ServiceError(f"a stream with the slug {slug!r} already exists")
        stream = Stream.objects.create(workspace=workspace, slug=slug, name=name, created_at=clock.now())
        audit_record(workspace=workspace, actor=actor, action="stream.create", target=f"stream:{stream.pk}",
                     data={"slug": slug, "name": name})
    return stream


def stream_update(*, stream: Stream, actor: str, name: str | None = None) -> Stream:
    """Rename a stream. Its slug stays: journeys name the stream by it."""
    if name is not None:
        stream.name = name_clean(name, what="stream")
        stream.save(update_fields=["name"])
        audit_record(workspace=stream.workspace, actor=actor, action="stream.update", target=f"stream:{stream.pk}",
                     data={"name": stream.name})
    return stream


def stream_delete(*, stream: Stream, actor: str) -> None:
    """Delete a stream and its items; refused while a journey that people are in (or may enter)
    draws from it. What people had stays in the outbox."""
    users = stream_journeys(stream=stream)
    if users:
        raise ServiceError(f"stream {stream.slug!r} is used by journey {users[0]!r}: take it out of the "
                           "journey (or archive the journey and let it drain) first")
    with transaction.atomic():
        audit_record(workspace=stream.workspace, actor=actor, action="stream.delete", target=f"stream:{stream.pk}",
                     data={"slug": stream.slug})
        stream.delete()


def stream_item_add(*, stream: Stream, template, actor: str, role: str = "", position: int | None = None) -> StreamItem:
    """Add a template to a stream, for every role (`role` empty) or one. `position` (1 = first)
    inserts it there and moves the rest down; None puts it last. People who had everything
    receive it at their next slot."""
    _template_check(stream.workspace_id, template)
    role = _role_clean(role)
    with transaction.atomic():
        stream = _locked(stream)
        count = stream.items.count()
        if count >= MAX_ITEMS:
            raise ServiceError(f"a stream holds at most {MAX_ITEMS} items")
        if stream.items.filter(template=template, role=role).exists():
            raise ServiceError(f"{template.slug!r} is already in stream {stream.slug!r}"
                               + (f" for role {role!r}" if role else ""))
        if position is None:
            position = count + 1
        elif not isinstance(position, int) or isinstance(position, bool) or position < 1:
            raise ServiceError("position: a whole number from 1 (first)")
        position = min(position, count + 1)
        stream.items.filter(position__gte=position).update(position=F("position") + 1)
        try:
            with transaction.atomic():
                item = StreamItem.objects.create(workspace_id=stream.workspace_id, stream=stream, template=template,
                                                 role=role, position=position, created_at=clock.now())
        except IntegrityError:
            raise ServiceError(f"{template.slug!r} is already in stream {stream.slug!r}") from None
        _renumber(stream)
        item.refresh_from_db(fields=["position"])
        audit_record(workspace=stream.workspace, actor=actor, action="stream.item_add", target=f"stream:{stream.pk}",
                     data={"item": item.pk, "template": template.slug, "role": role, "position": item.position})
    return item


def stream_item_remove(*, item: StreamItem, actor: str) -> None:
    """Take an item out of its stream. Who had it keeps having had it; adding the template back
    later makes a new item, which people receive again."""
    with transaction.atomic():
        stream = _locked(item.stream)
        audit_record(workspace=stream.workspace, actor=actor, action="stream.item_remove",
                     target=f"stream:{stream.pk}", data={"item": item.pk, "template_id": item.template_id})
        item.delete()
        _renumber(stream)


def stream_items_reorder(*, stream: Stream, item_ids: list[int], actor: str) -> list[StreamItem]:
    """Put the stream's items in the order of `item_ids` (every item, each once)."""
    with transaction.atomic():
        stream = _locked(stream)
        items = {item.pk: item for item in stream.items.all()}
        if sorted(item_ids) != sorted(items) or len(set(item_ids)) != len(item_ids):
            raise ServiceError("item_ids: list every item of the stream exactly once "
                               f"(it has {sorted(items)})")
        for i, pk in enumerate(item_ids, start=1):
            items[pk].position = i
        StreamItem.objects.bulk_update(list(items.values()), ["position"])
        audit_record(workspace=stream.workspace, actor=actor, action="stream.reorder", target=f"stream:{stream.pk}",
                     data={"items": item_ids})
    return [items[pk] for pk in item_ids]


class _ItemFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    template: Annotated[str, Field(min_length=1, max_length=100)]
    role: Annotated[str, Field(max_length=64)] = ""


class _StreamFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slug: Annotated[str, Field(pattern=SLUG_RE.pattern.replace("\\A", "^").replace("\\Z", "$"))]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    items: list[_ItemFile] = Field(default_factory=list, max_length=MAX_ITEMS)


def _parse(data: object) -> _StreamFile:
    try:
        return _StreamFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
        raise ServiceError(f"{path or 'stream'}: {error['msg']}") from None


def stream_apply(*, workspace: Workspace, data: object, actor: str) -> tuple[Stream, bool]:
    """Create or update the stream a file describes::

        slug: early-stage
        name: Early stage
        items:
          - {template: why-plan-early}
          - {template: buyer-roi-guide, role: buyer}

    Items are matched by (template, role): one that stays keeps its identity (so who had it
    still has), missing ones are removed, new ones added, all put in the file's order. Applying
    the same file again changes nothing. Returns (stream, whether anything changed)."""
    from leadflow.messaging.models import Template

    spec = _parse(data)
    wanted = [(i, item.template, _role_clean(item.role)) for i, item in enumerate(spec.items)]
    seen = set()
    for i, slug, role in wanted:
        if (slug, role) in seen:
            raise ServiceError(f"items[{i}]: {slug!r}" + (f" for role {role!r}" if role else "")
                               + " is listed twice")
        seen.add((slug, role))
    templates = {t.slug: t for t in Template.objects.filter(workspace=workspace, slug__in={s for _, s, _ in wanted})}
    for i, slug, _ in wanted:
        if slug not in templates:
            raise ServiceError(f"items[{i}].template: there is no email template {slug!r}")
    changed = False
    with transaction.atomic():
        stream = Stream.objects.select_for_update().filter(workspace=workspace, slug=spec.slug).first()
        name = name_clean(spec.name or (stream.name if stream is not None else spec.slug), what="stream")
        if stream is None:
            stream = Stream.objects.create(workspace=workspace, slug=spec.slug, name=name, created_at=clock.now())
            changed = True
        elif stream.name != name:
            stream.name = name
            stream.save(update_fields=["name"])
            changed = True
        existing = {(item.template_id, item.role): item for item in stream.items.all()}
        keep = {(templates[slug].pk, role) for _, slug, role in wanted}
        gone = [item.pk for key, item in existing.items() if key not in keep]
        if gone:
            StreamItem.objects.filter(pk__in=gone).delete()
            changed = True
        now = clock.now()
        items = []
        for position, (_, slug, role) in enumerate(wanted, start=1):
            item = existing.get((templates[slug].pk, role))
            if item is None:
                item = StreamItem.objects.create(workspace=workspace, stream=stream, template=templates[slug],
                                                 role=role, position=position, created_at=now)
                changed = True
            elif item.position != position:
                item.position = position
                changed = True
            items.append(item)
        StreamItem.objects.bulk_update(items, ["position"])
        if changed:
            audit_record(workspace=workspace, actor=actor, action="stream.apply", target=f"stream:{stream.pk}",
                         data={"slug": stream.slug, "items": len(items)})
    return stream, changed


def stream_export(*, stream: Stream) -> dict:
    """The stream as `stream_apply` reads it (for files kept in git)."""
    items = [{"template": item.template.slug, **({"role": item.role} if item.role else {})}
             for item in stream.items.select_related("template").order_by("position", "pk")]
    return {"slug": stream.slug, "name": stream.name, "items": items}


# --- selectors ----------------------------------------------------------------------------------

def stream_list(*, workspace: Workspace):
    return Stream.objects.filter(workspace=workspace).annotate(item_count=Count("items"))


def stream_get(*, workspace: Workspace, stream_id: int) -> Stream | None:
    return Stream.objects.filter(workspace=workspace, pk=stream_id).first()


def stream_get_by_slug(*, workspace: Workspace, slug: str) -> Stream | None:
    return Stream.objects.filter(workspace=workspace, slug=slug).first()


def stream_item_get(*, stream: Stream, item_id: int) -> StreamItem | None:
    return stream.items.filter(pk=item_id).select_related("template").first()


def _stream_slugs(definition: dict) -> set[str]:
    return {pool.get("stream") for node in definition.get("nodes", []) if isinstance(node, dict)
            and node.get("type") == "stream" for pool in node.get("pools", []) if isinstance(pool, dict)}


def _journeys_using(stream: Stream) -> dict[str, int]:
    """slug → id of the journeys whose published version (unless the journey is archived) or a
    version people are still in names the stream."""
    naming = [(pk, journey_id, slug, status, published) for pk, journey_id, slug, status, published, definition
              in JourneyVersion.objects.filter(workspace_id=stream.workspace_id).values_list(
                  "pk", "journey_id", "journey__slug", "journey__status", "journey__version_id", "definition")
              if stream.slug in _stream_slugs(definition)]
    used = {slug: journey_id for pk, journey_id, slug, status, published in naming
            if pk == published and status != JourneyStatus.ARCHIVED}
    rest = [(pk, journey_id) for pk, journey_id, slug, _, _ in naming if slug not in used]
    if rest:
        occupied = set(Enrollment.objects.filter(journey_id__in={j for _, j in rest},
                                                 version_id__in={v for v, _ in rest}, state=EnrollmentState.ACTIVE)
                       .values_list("version_id", flat=True).distinct())
        used.update({slug: journey_id for pk, journey_id, slug, _, _ in naming if pk in occupied})
    return used


def stream_journeys(*, stream: Stream) -> list[str]:
    """Slugs of the journeys that draw from the stream (see `stream_delete`)."""
    return sorted(_journeys_using(stream))


def stream_report(*, stream: Stream) -> dict:
    """The stream's items in order with how many people had each, how many people are exhausted
    on it now, and the journeys that use it."""
    from leadflow.messaging.models import Message

    items = list(stream.items.select_related("template").order_by("position", "pk"))
    counts = {}
    if items:
        counts = (Message.objects.filter(workspace_id=stream.workspace_id,
                                         dedupe_key__startswith=f"{KEY_PREFIX}{stream.pk}:")
                  .aggregate(**{f"i{item.pk}": Count("pk", filter=Q(dedupe_key__startswith=f"{KEY_PREFIX}{stream.pk}:"
                                                                                          f"{item.pk}:"))
                                for item in items}))
    journeys = _journeys_using(stream)
    exhausted = Enrollment.objects.filter(journey_id__in=list(journeys.values()), state=EnrollmentState.ACTIVE,
                                          data__exhausted=stream.slug).count() if journeys else 0
    return {"stream": stream, "exhausted": exhausted, "journeys": sorted(journeys),
            "items": [{"item": item, "had": counts.get(f"i{item.pk}", 0)} for item in items]}
