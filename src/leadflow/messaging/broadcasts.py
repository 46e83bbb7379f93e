"""Broadcasts: a one-off send of an approved marketing template to a segment, now or at a scheduled
time, pausable and cancellable, optionally as an A/B test (the maths is in `messaging.abtest`).

    draft ─schedule─▶ scheduled ─(tick at scheduled_at)─▶ sending ───────────────▶ done
      └───────────────send now──────────────────────────▶ testing ─(decide_at)─▶ sending
    sending / testing ⇄ paused (pause, resume);  anything not done or cancelled ─cancel─▶ cancelled

Creating or editing a broadcast only stores the plan; `broadcast_schedule` and `broadcast_send_now`
are the confirmation. Starting pins the template's approved version (and each variant's; refused
without one), then reads the audience — the segment's members with an email address, one per
address — and queues one Message per recipient with `outbox.messages_queue_bulk` under the dedupe
prefix `broadcast:<id>:`, so queueing again never queues anyone twice. Queueing goes in passes of
at most QUEUE_PER_PASS messages: the call that starts the broadcast does the first, every tick
carries on, and a pass interrupted half-way (a crash) is finished by the next one. Membership is
read when sending starts: when the last pass ends `audience_count` is set and nobody is added after.

The consent gate still decides at dispatch time: everyone with an address is queued and the
dispatcher blocks whoever may not receive marketing on the template's topic, so blocked counts show.

With variants, `test_share` of the audience is split evenly over them (`abtest.ab_split`, seeded
by the broadcast id). The rest are queued at the start too, but *held*: no variant, `not_before`
= HELD (far in the future, so no dispatcher claims them). At `decide_at` (or when a winner is
picked by hand) the held messages are pointed at the winning version and released in one UPDATE,
so no person is ever queued twice or gets two variants.

`broadcasts_tick(now=)` is the timer (every 15 s, in the worker's transaction, idempotent): it
starts scheduled broadcasts whose time has come, queues remaining passes, decides A/B tests at
`decide_at` and marks broadcasts `done` when none of their messages is queued, deferred or sending.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import defaultdict

from django.db import IntegrityError, transaction
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Lower, Trim

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record, name_clean, slug_unique
from leadflow.messaging import abtest, outbox
from leadflow.messaging.models import (
    Broadcast,
    BroadcastStatus,
    BroadcastVariant,
    Message,
    MessageStatus,
    SendingServer,
    Template,
    TemplateKind,
    TemplateVersion,
    VersionStatus,
)
from leadflow.segments.models import Segment, SegmentMember

log = logging.getLogger(__name__)

UTC = dt.timezone.utc
# `not_before` of the held rest of an A/B audience: far enough that no dispatcher ever finds it due,
# near enough that every database and time zone conversion can hold it.
HELD = dt.datetime(9000, 1, 1, tzinfo=UTC)
QUEUE_PER_PASS = 20_000
CHUNK = 1000
MAX_NAME = 200
MAX_DECIDE_HOURS = 14 * 24
SCHEDULE_GRACE = dt.timedelta(minutes=5)
SYSTEM = "system"

DRAFT, SCHEDULED = BroadcastStatus.DRAFT, BroadcastStatus.SCHEDULED
SENDING, TESTING, PAUSED = BroadcastStatus.SENDING, BroadcastStatus.TESTING, BroadcastStatus.PAUSED
CANCELLED, DONE = BroadcastStatus.CANCELLED, BroadcastStatus.DONE
EDITABLE = (DRAFT, SCHEDULED)
RUNNING = (SENDING, TESTING)
# Messages still to go: a broadcast with none of these left is done.
OPEN = (MessageStatus.QUEUED, MessageStatus.DEFERRED, MessageStatus.SENDING)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()  # "leave as it is" for broadcast_update (None means "clear")


# --- checks ---------------------------------------------------------------------------------------

def _name(name: object) -> str:
    return name_clean(name, what="broadcast", max_length=MAX_NAME)


def _unique_slug(workspace_id: int, name: str) -> str:
    return slug_unique(model=Broadcast, workspace_id=workspace_id, name=name, fallback="broadcast")


def _template_check(workspace_id: int, template: Template | None, what: str = "template") -> Template:
    if not isinstance(template, Template) or template.workspace_id != workspace_id:
        raise ServiceError(f"{what}: no such template in this workspace")
    if template.kind != TemplateKind.MARKETING:
        raise ServiceError(f"{what}: {template.slug!r} is a transactional template; broadcasts send marketing email")
    if template.archived_at is not None:
        raise ServiceError(f"{what}: {template.slug!r} is archived")
    return template


def _segment_check(workspace_id: int, segment: Segment | None) -> Segment:
    if not isinstance(segment, Segment) or segment.workspace_id != workspace_id:
        raise ServiceError("segment: no such segment in this workspace")
    if segment.archived_at is not None:
        raise ServiceError(f"segment: {segment.name!r} is archived")
    return segment


def _server_check(workspace_id: int, server: SendingServer | None) -> SendingServer | None:
    if server is not None and (not isinstance(server, SendingServer) or server.workspace_id != workspace_id):
        raise ServiceError("server: no such sending server in this workspace")
    return server


def _variant_templates(workspace_id: int, template: Template, others) -> list[Template]:
    """The templates of variants A, B, … ([] when `others` is empty: not an A/B test). Variant A
    is the broadcast's own template; `others` are the templates of B, C and D."""
    others = list(others or [])
    if not others:
        return []
    if len(others) > abtest.MAX_VARIANTS - 1:
        raise ServiceError(f"variants: at most {abtest.MAX_VARIANTS} in all (the template is variant A, "
                           f"so at most {abtest.MAX_VARIANTS - 1} more)")
    full = [template]
    for n, other in enumerate(others):
        label = abtest.LABELS[n + 1]
        _template_check(workspace_id, other, what=f"variant {label}")
        if any(other.pk == t.pk for t in full):
            raise ServiceError(f"variant {label}: {other.slug!r} is already a variant of this broadcast "
                               "(variant A is the broadcast's own template)")
        if other.topic != template.topic:
            raise ServiceError(f"variant {label}: {other.slug!r} has topic {other.topic or '(all marketing)'!r} "
                               f"but the broadcast's template has {template.topic or '(all marketing)'!r}; "
                               "every variant must go to the same subscribers")
        full.append(other)
    return full


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ServiceError(f"{what} must be a number")
    return float(value)


def _ab_settings(test_share: object, winner_metric: object, decide_after_hours: object) -> tuple[float, str, float]:
    share = _number(test_share, "test share")
    if not 0 < share < 1:
        raise ServiceError("test share must be between 0 and 1 (0.2 sends the test to 20% of the audience)")
    if winner_metric not in abtest.METRICS:
        raise ServiceError(f"winner metric must be one of {', '.join(abtest.METRICS)}")
    hours = _number(decide_after_hours, "decide after hours")
    if not 0 < hours <= MAX_DECIDE_HOURS:
        raise ServiceError(f"decide after hours must be more than 0 and at most {MAX_DECIDE_HOURS}")
    return share, str(winner_metric), hours


def _when(value: object, what: str = "scheduled_at") -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise ServiceError(f"{what} must be a date and time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _not_past(when: dt.datetime, now: dt.datetime) -> None:
    if when < now - SCHEDULE_GRACE:
        raise ServiceError(f"{when:%Y-%m-%d %H:%M} UTC is in the past; pick a later time or send now")


def _version_any(template: Template) -> TemplateVersion:
    """A version to record on a new variant row until sending pins the approved one."""
    version = template.approved_version or template.versions.order_by("-number").first()
    if version is None:
        raise ServiceError(f"template {template.slug!r} has no version yet")
    return version


def _approved(template: Template) -> TemplateVersion:
    fresh = Template.objects.select_related("approved_version").get(pk=template.pk)
    version = fresh.approved_version
    if version is None or version.status != VersionStatus.APPROVED:
        raise ServiceError(f"template {template.slug!r} has no approved version: approve one before sending")
    if fresh.archived_at is not None:
        raise ServiceError(f"template {template.slug!r} is archived")
    return version


def _variants(broadcast: Broadcast) -> list[BroadcastVariant]:
    return list(BroadcastVariant.objects.filter(workspace_id=broadcast.workspace_id, broadcast=broadcast)
                .select_related("version__template").order_by("label"))


def _variants_write(broadcast: Broadcast, templates: list[Template]) -> None:
    BroadcastVariant.objects.filter(broadcast=broadcast).delete()
    BroadcastVariant.objects.bulk_create([
        BroadcastVariant(workspace_id=broadcast.workspace_id, broadcast=broadcast, label=abtest.LABELS[i],
                         version=_version_any(t)) for i, t in enumerate(templates)])


def _locked(broadcast: Broadcast) -> Broadcast:
    return (Broadcast.objects.select_for_update(of=("self",)).select_related("template", "segment")
            .get(pk=broadcast.pk, workspace_id=broadcast.workspace_id))


def _status_label(status: str) -> str:
    return BroadcastStatus(status).label.lower() if status in BroadcastStatus.values else status


def broadcast_decide_hours(broadcast: Broadcast) -> float:
    """Hours from the start to the A/B decision. Kept in `result` (no column holds it before the
    start fixes `decide_at`)."""
    return float((broadcast.result or {}).get("decide_after_hours", 4))


# --- writes ---------------------------------------------------------------------------------------

def broadcast_create(*, workspace: Workspace, name: str, template: Template, segment: Segment,
                     scheduled_at: dt.datetime | None = None, server: SendingServer | None = None,
                     variants: list[Template] | None = None, test_share: float = 0.2,
                     winner_metric: str = "click_rate", decide_after_hours: float = 4, actor: str) -> Broadcast:
    """A draft broadcast. `variants` are the templates of variants B, C and D (variant A is
    `template`); with them it is an A/B test. `scheduled_at` is the planned time; nothing is sent
    until `broadcast_schedule` or `broadcast_send_now` confirms it."""
    name = _name(name)
    _template_check(workspace.pk, template)
    _segment_check(workspace.pk, segment)
    _server_check(workspace.pk, server)
    templates = _variant_templates(workspace.pk, template, variants)
    share, metric, hours = _ab_settings(test_share, winner_metric, decide_after_hours)
    when = _when(scheduled_at)
    now = clock.now()
    for _ in range(3):
        try:
            with transaction.atomic():
                broadcast = Broadcast.objects.create(
                    workspace=workspace, name=name, slug=_unique_slug(workspace.pk, name), template=template,
                    segment=segment, server=server, scheduled_at=when, test_share=share, winner_metric=metric,
                    result={"decide_after_hours": hours}, created_by=actor[:200], created_at=now)
                _variants_write(broadcast, templates)
                audit_record(workspace=workspace, actor=actor, action="broadcast.create",
                             target=f"broadcast:{broadcast.pk}",
                             data={"name": name, "template": template.slug, "segment": segment.slug,
                                   "variants": [t.slug for t in templates]})
                return broadcast
        except IntegrityError:
            continue  # a concurrent create took the slug; pick the next one
    raise ServiceError(f"could not find a free slug for {name!r}; try another name")


def broadcast_update(*, broadcast: Broadcast, actor: str, name=UNSET, template=UNSET, segment=UNSET,
                     scheduled_at=UNSET, server=UNSET, variants=UNSET, test_share=UNSET, winner_metric=UNSET,
                     decide_after_hours=UNSET) -> Broadcast:
    """Change a draft or scheduled broadcast; arguments left UNSET stay as they are. Clearing
    `scheduled_at` of a scheduled broadcast takes it back to draft; `variants=[]` ends the A/B test."""
    now = clock.now()
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in EDITABLE:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; only drafts and scheduled "
                               "broadcasts can be edited")
        ws = b.workspace_id
        fields: list[str] = []
        if name is not UNSET:
            b.name = _name(name)
            fields.append("name")
        if template is not UNSET:
            b.template = _template_check(ws, template)
            fields.append("template")
        if segment is not UNSET:
            b.segment = _segment_check(ws, segment)
            fields.append("segment")
        if server is not UNSET:
            b.server = _server_check(ws, server)
            fields.append("server")
        if template is not UNSET or variants is not UNSET:
            others = ([v.version.template for v in _variants(b)[1:]] if variants is UNSET else variants)
            _variants_write(b, _variant_templates(ws, b.template, others))
            fields.append("variants")
        share, metric, hours = _ab_settings(
            b.test_share if test_share is UNSET else test_share,
            b.winner_metric if winner_metric is UNSET else winner_metric,
            broadcast_decide_hours(b) if decide_after_hours is UNSET else decide_after_hours)
        if (share, metric, hours) != (b.test_share, b.winner_metric, broadcast_decide_hours(b)):
            b.test_share, b.winner_metric = share, metric
            b.result = {**(b.result or {}), "decide_after_hours": hours}
            fields.append("ab")
        if scheduled_at is not UNSET:
            when = _when(scheduled_at)
            if when is not None and b.status == SCHEDULED:
                _not_past(when, now)
            if when is None and b.status == SCHEDULED:
                b.status = DRAFT
            b.scheduled_at = when
            fields.append("scheduled_at")
        if b.status == SCHEDULED:
            _preflight(b)  # still confirmed: it must still be able to start
        b.save()
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.update", target=f"broadcast:{b.pk}",
                     data={"fields": sorted(set(fields))})
    return b


def broadcast_subject_variant_add(*, broadcast: Broadcast, subject: str, actor: str, preheader: str | None = None,
                                  name: str | None = None) -> BroadcastVariant:
    """Test another subject line: copy variant A's template (its approved version, else its newest)
    with `subject` (and `preheader`) as a new template, submit that copy for approval and add it as
    the next variant (B, C or D). Nothing skips approval: the broadcast cannot start until the copy
    is approved. All or nothing — a refusal anywhere leaves no copy behind."""
    from leadflow.messaging import content

    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in EDITABLE:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; variants are added to drafts only")
        if b.status == SCHEDULED:
            raise ServiceError("this broadcast is scheduled, and a new variant must be approved before it can start: "
                               "clear its planned time (it goes back to draft), add the variant, and schedule it "
                               "again once the variant is approved")
        variants = _variants(b)
        if len(variants) >= abtest.MAX_VARIANTS:
            raise ServiceError(f"this broadcast already has {abtest.MAX_VARIANTS} variants (A to D), the most an "
                               "A/B test can have; remove one first")
        others = [v.version.template for v in variants[1:]]
        label = abtest.LABELS[len(others) + 1]
        source = _template_check(b.workspace_id, Template.objects.select_related("approved_version")
                                 .get(pk=b.template_id))
        base = source.approved_version
        if base is None or base.status != VersionStatus.APPROVED:
            base = content.version_latest(template=source)
            if base is None:
                raise ServiceError(f"template {source.slug!r} has no version yet")
        if isinstance(subject, str):
            wanted = " ".join(subject.split()).lower()
            used = [("A", base.subject)] + [(v.label, v.version.subject) for v in variants[1:]]
            for other, used_subject in used:
                if wanted and " ".join(used_subject.split()).lower() == wanted:
                    raise ServiceError(f"variant {other} already has the subject {used_subject!r}; "
                                       "a subject-line variant needs a different subject")
        if name is None:
            name = content.template_name_unused(workspace_id=b.workspace_id,
                                                name=f"{source.name} — {b.name}, variant {label}")
        copy = content.template_duplicate(template=source, version=base, actor=actor, name=name, subject=subject,
                                          preheader=preheader)
        content.version_submit(version=content.version_latest(template=copy), actor=actor)
        broadcast_update(broadcast=b, actor=actor, variants=[*others, copy])
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.subject_variant",
                     target=f"broadcast:{b.pk}", data={"label": label, "template": copy.slug,
                                                       "from_version": base.number})
    return (BroadcastVariant.objects.select_related("version__template")
            .get(workspace_id=b.workspace_id, broadcast=b, label=label))


def _preflight(b: Broadcast) -> None:
    """What starting would refuse, checked early (scheduling) and again at the start."""
    _segment_check(b.workspace_id, Segment.objects.get(pk=b.segment_id))
    _approved(b.template)
    for variant in _variants(b):
        _approved(variant.version.template)


def broadcast_schedule(*, broadcast: Broadcast, at: dt.datetime, actor: str) -> Broadcast:
    """Confirm a draft (or move a scheduled broadcast) to start at `at`; the tick starts it."""
    when = _when(at, "at")
    if when is None:
        raise ServiceError("at: give the date and time to send")
    now = clock.now()
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in EDITABLE:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; only a draft or scheduled "
                               "broadcast can be scheduled")
        _not_past(when, now)
        _preflight(b)
        b.status, b.scheduled_at = SCHEDULED, when
        b.result = {k: v for k, v in (b.result or {}).items() if k != "error"}
        b.save(update_fields=["status", "scheduled_at", "result"])
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.schedule", target=f"broadcast:{b.pk}",
                     data={"at": when.isoformat()})
    return b


def broadcast_send_now(*, broadcast: Broadcast, actor: str) -> Broadcast:
    """Start a draft or scheduled broadcast at once: pin versions and queue the first pass."""
    now = clock.now()
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in EDITABLE:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; only a draft or scheduled "
                               "broadcast can be sent")
        _start(b, now=now, actor=actor)
    return b


def _start(b: Broadcast, *, now: dt.datetime, actor: str) -> None:
    """Pin the versions, move to sending (or testing) and queue the first pass. `b` is locked."""
    _segment_check(b.workspace_id, Segment.objects.get(pk=b.segment_id))
    version = _approved(b.template)
    variants = _variants(b)
    for variant in variants:
        variant.version = _approved(variant.version.template)
    BroadcastVariant.objects.bulk_update(variants, ["version"])
    hours = broadcast_decide_hours(b)
    b.version = version
    b.status = TESTING if variants else SENDING
    b.started_at = now
    b.decide_at = now + dt.timedelta(hours=hours) if variants else None
    b.audience_count = None
    b.finished_at = None
    b.winner = None
    b.result = {"decide_after_hours": hours}
    b.save()
    audit_record(workspace=b.workspace, actor=actor, action="broadcast.start", target=f"broadcast:{b.pk}",
                 data={"version": version.number, "variants": {v.label: v.version.number for v in variants}})
    _queue_pass(b, now=now, variants=variants)


def _audience(b: Broadcast) -> dict[int, str]:
    """{contact id: address} of the segment's members with an address, one contact per address
    (the lowest id), in contact id order."""
    rows = (SegmentMember.objects.filter(workspace_id=b.workspace_id, segment_id=b.segment_id)
            .exclude(contact__email="").order_by("contact_id").values_list("contact_id", "contact__email"))
    seen: set[str] = set()
    audience: dict[int, str] = {}
    for contact_id, email in rows.iterator(chunk_size=5000):
        address = email.strip()
        key = address.lower()
        if key and key not in seen:
            seen.add(key)
            audience[contact_id] = address
    return audience


def _queue_pass(b: Broadcast, *, now: dt.datetime, variants: list[BroadcastVariant] | None = None,
                limit: int | None = None) -> int:
    """Queue up to `limit` (QUEUE_PER_PASS) of the recipients not queued yet, test group first;
    sets `audience_count` when nobody is left. Returns how many were queued."""
    limit = QUEUE_PER_PASS if limit is None else limit
    variants = _variants(b) if variants is None else variants
    audience = _audience(b)
    if variants:
        plan = abtest.ab_split(seed=b.pk, contact_ids=list(audience), share=b.test_share, variants=len(variants))
    else:
        plan = [(contact_id, None) for contact_id in audience]
    done = set(Message.objects.filter(workspace_id=b.workspace_id, broadcast_id=b.pk)
               .values_list("contact_id", flat=True))
    todo = [(contact_id, index) for contact_id, index in plan if contact_id not in done]
    groups: dict[int | None, list[int]] = defaultdict(list)
    for contact_id, index in todo[:limit]:
        groups[index].append(contact_id)
    topic = Template.objects.filter(pk=b.template_id).values_list("topic", flat=True).get()
    queued = 0
    for index, ids in groups.items():
        if variants:
            # The rest of an A/B audience waits, held, on variant A's version until the winner is known.
            variant = variants[index] if index is not None else None
            version = (variant or variants[0]).version
            not_before = now if variant is not None else HELD
        else:
            variant, version, not_before = None, b.version, now
        for start in range(0, len(ids), CHUNK):
            contacts = [Contact(pk=c, workspace_id=b.workspace_id, email=audience[c]) for c in ids[start:start + CHUNK]]
            queued += outbox.messages_queue_bulk(
                workspace_id=b.workspace_id, contacts=contacts, template=version.template, version=version,
                topic=topic, source=f"broadcast:{b.slug}", campaign=b.slug, dedupe_prefix=f"broadcast:{b.pk}:",
                not_before=not_before, server_id=b.server_id, broadcast_id=b.pk,
                variant_id=variant.pk if variant is not None else None)
    if len(todo) <= limit:
        b.audience_count = Message.objects.filter(workspace_id=b.workspace_id, broadcast_id=b.pk).count()
        b.result = {k: v for k, v in (b.result or {}).items() if k != "error"}
        b.save(update_fields=["audience_count", "result"])
    return queued


def broadcast_pause(*, broadcast: Broadcast, actor: str) -> Broadcast:
    """Hold a sending broadcast: the dispatcher skips its messages and nothing new is queued or
    decided until it is resumed."""
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in RUNNING:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; only a sending broadcast can be paused")
        b.status = PAUSED
        b.save(update_fields=["status"])
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.pause", target=f"broadcast:{b.pk}")
    return b


def broadcast_resume(*, broadcast: Broadcast, actor: str) -> Broadcast:
    """Carry on a paused broadcast (an A/B test whose `decide_at` passed meanwhile is decided by
    the next tick)."""
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status != PAUSED:
            raise ServiceError(f"this broadcast is {_status_label(b.status)}, not paused")
        testing = b.winner_id is None and BroadcastVariant.objects.filter(broadcast=b).exists()
        b.status = TESTING if testing else SENDING
        b.save(update_fields=["status"])
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.resume", target=f"broadcast:{b.pk}")
    return b


def broadcast_cancel(*, broadcast: Broadcast, actor: str) -> Broadcast:
    """Stop for good: messages not sent yet (queued, deferred, held) become `cancelled`; those
    already sent stay; one being sent right now finishes."""
    now = clock.now()
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status in (CANCELLED, DONE):
            raise ServiceError(f"this broadcast is already {_status_label(b.status)}")
        cancelled = (Message.objects.filter(workspace_id=b.workspace_id, broadcast_id=b.pk,
                                            status__in=[MessageStatus.QUEUED, MessageStatus.DEFERRED])
                     .update(status=MessageStatus.CANCELLED, error="the broadcast was cancelled"))
        b.status, b.finished_at = CANCELLED, now
        b.save(update_fields=["status", "finished_at"])
        audit_record(workspace=b.workspace, actor=actor, action="broadcast.cancel", target=f"broadcast:{b.pk}",
                     data={"messages_cancelled": cancelled})
    return b


def broadcast_pick_winner(*, broadcast: Broadcast, actor: str, label: str | None = None) -> Broadcast:
    """Decide an A/B test now instead of at `decide_at`: by the results so far (`label` None), or
    the variant named by `label`; the winner is then sent to the rest."""
    now = clock.now()
    with transaction.atomic():
        b = _locked(broadcast)
        if b.status not in (TESTING, PAUSED):
            raise ServiceError(f"this broadcast is {_status_label(b.status)}; a winner is picked while the "
                               "A/B test runs")
        _decide(b, now=now, actor=actor, label=label)
    return b


def _decide(b: Broadcast, *, now: dt.datetime, actor: str, label: str | None = None) -> None:
    variants = _variants(b)
    if not variants:
        raise ServiceError("this broadcast is not an A/B test")
    if b.winner_id is not None:
        raise ServiceError(f"the winner is already variant {b.winner.label}")
    if b.audience_count is None:
        raise ServiceError("the audience is still being queued; try again in a minute")
    labels = [v.label for v in variants]
    if label is not None and label not in labels:
        raise ServiceError(f"label must be one of {', '.join(labels)}")
    metric = abtest.METRICS.get(b.winner_metric) or abtest.METRICS["click_rate"]
    by_variant = abtest.variant_counts(broadcast=b, metric=b.winner_metric)
    counts = [by_variant.get(v.pk, (0, 0)) for v in variants]
    outcome = abtest.ab_decide(counts=counts, higher_is_better=metric.higher_is_better)
    winner = variants[labels.index(label) if label is not None else outcome.winner]
    released = (Message.objects.filter(workspace_id=b.workspace_id, broadcast_id=b.pk, variant__isnull=True,
                                       status=MessageStatus.QUEUED, not_before=HELD)
                .update(template_id=winner.version.template_id, version_id=winner.version_id, not_before=now))
    if label is not None:
        decision, note = "picked by hand", f"variant {label} was picked by hand"
    else:
        decision = ("significant" if outcome.significant else
                    "not significant" if outcome.p_value is not None else "not enough data")
        note = outcome.reason
    b.winner = winner
    b.result = {
        "decide_after_hours": broadcast_decide_hours(b), "metric": b.winner_metric, "higher_is_better": metric.higher_is_better,
        "test": outcome.test, "statistic": outcome.statistic, "p_value": outcome.p_value, "alpha": abtest.ALPHA,
        "significant": outcome.significant, "decision": decision, "note": note, "winner": winner.label,
        "best_by_metric": labels[outcome.winner], "manual": label is not None, "decided_at": now.isoformat(),
        "decided_by": actor, "released": released,
        "variants": [{"label": v.label, "template": v.version.template.slug, "version": v.version.number,
                      "delivered": n, "successes": s, "rate": outcome.rates[i]}
                     for i, (v, (s, n)) in enumerate(zip(variants, counts))],
    }
    if b.status == TESTING:
        b.status = SENDING
    b.save(update_fields=["winner", "result", "status"])
    audit_record(workspace=b.workspace, actor=actor, action="broadcast.winner", target=f"broadcast:{b.pk}",
                 data={"winner": winner.label, "decision": decision, "p_value": outcome.p_value,
                       "released": released})


# --- the timer ------------------------------------------------------------------------------------

def broadcasts_tick(*, now: dt.datetime) -> None:
    """Start what is due, queue remaining passes, decide A/B tests, finish what is done. Each
    broadcast in its own savepoint: one that cannot start does not hold up the others."""
    for b in Broadcast.objects.filter(status=SCHEDULED, scheduled_at__lte=now).order_by("scheduled_at", "pk"):
        try:
            with transaction.atomic():
                locked = _locked(b)
                if locked.status == SCHEDULED:
                    _start(locked, now=now, actor=SYSTEM)
        except ServiceError as exc:
            _start_failed(b, now=now, reason=str(exc))
    for b in Broadcast.objects.filter(status__in=RUNNING, audience_count__isnull=True).order_by("pk"):
        try:
            with transaction.atomic():
                locked = _locked(b)
                if locked.status in RUNNING and locked.audience_count is None:
                    _queue_pass(locked, now=now)
        except ServiceError as exc:
            # The outbox refuses a pinned version that is no longer approved (a newer one was
            # approved meanwhile): shown on the broadcast, retried every tick.
            _note_error(b, f"queueing stopped: {exc}")
    for b in Broadcast.objects.filter(status=TESTING, decide_at__lte=now, winner__isnull=True,
                                      audience_count__isnull=False).order_by("pk"):
        try:
            with transaction.atomic():
                locked = _locked(b)
                if locked.status == TESTING and locked.winner_id is None:
                    _decide(locked, now=now, actor=SYSTEM)
        except ServiceError as exc:
            _note_error(b, f"the A/B decision failed: {exc}")
    sending = Broadcast.objects.filter(status=SENDING, audience_count__isnull=False)
    busy = (Message.objects.filter(broadcast_id__in=sending.values("pk"), status__in=OPEN)
            .values("broadcast_id").distinct())
    sending.exclude(pk__in=busy).update(status=DONE, finished_at=now)


def _note_error(b: Broadcast, text: str) -> None:
    log.warning("broadcast %s: %s", b.pk, text)
    with transaction.atomic():
        locked = _locked(b)
        if (locked.result or {}).get("error") != text:
            locked.result = {**(locked.result or {}), "error": text}
            locked.save(update_fields=["result"])


def _start_failed(b: Broadcast, *, now: dt.datetime, reason: str) -> None:
    """A scheduled broadcast that cannot start (its approval was withdrawn, its segment archived…)
    goes back to draft with the reason, so the marketer sees it instead of a silent retry."""
    with transaction.atomic():
        locked = _locked(b)
        if locked.status != SCHEDULED:
            return
        locked.status = DRAFT
        locked.result = {**(locked.result or {}), "error": f"could not start at {now:%Y-%m-%d %H:%M} UTC: {reason}"}
        locked.save(update_fields=["status", "result"])
        audit_record(workspace=locked.workspace, actor=SYSTEM, action="broadcast.start_failed",
                     target=f"broadcast:{locked.pk}", data={"reason": reason})


# --- reads ----------------------------------------------------------------------------------------

def broadcast_get(*, workspace: Workspace, broadcast_id: int) -> Broadcast | None:
    return (Broadcast.objects.filter(workspace=workspace, pk=broadcast_id)
            .select_related("template", "segment", "server", "version", "winner").first())


def broadcast_list(*, workspace: Workspace, status: str = "") -> QuerySet[Broadcast]:
    qs = Broadcast.objects.filter(workspace=workspace).select_related("template", "segment", "winner")
    return qs.filter(status=status) if status else qs


def broadcast_variants(*, broadcasts: list[Broadcast]) -> dict[int, list[BroadcastVariant]]:
    """{broadcast id: its variants A, B, …} in one query."""
    found: dict[int, list[BroadcastVariant]] = {b.pk: [] for b in broadcasts}
    for variant in (BroadcastVariant.objects.filter(broadcast_id__in=list(found))
                    .select_related("version__template").order_by("broadcast_id", "label")):
        found[variant.broadcast_id].append(variant)
    return found


def _sendable(*, workspace_id: int, topic: str, now: dt.datetime):
    """The consent engineer's `sendable_contacts` queryset, or None while it does not exist."""
    from leadflow.consent import gate

    sendable = getattr(gate, "sendable_contacts", None)
    return None if sendable is None else sendable(workspace_id=workspace_id, topic=topic, now=now)


def broadcast_counts(*, broadcast: Broadcast, now: dt.datetime) -> dict:
    """Who it would go to now: `recipients` (distinct addresses among the segment's members) and
    `consent_filtered` (those the consent gate lets marketing on the template's topic reach,
    ignoring caps and quiet hours, which only delay; None when the gate cannot count). Shown
    before sending; after the start `audience` is the number actually queued."""
    members = (Contact.objects.filter(workspace_id=broadcast.workspace_id,
                                      segment_memberships__segment_id=broadcast.segment_id)
               .annotate(address=Lower(Trim("email"))).exclude(address=""))
    distinct = Count("address", distinct=True)
    recipients = members.aggregate(n=distinct)["n"]
    topic = Template.objects.filter(pk=broadcast.template_id).values_list("topic", flat=True).get()
    sendable = _sendable(workspace_id=broadcast.workspace_id, topic=topic, now=now)
    consent = (None if sendable is None else
               members.filter(pk__in=sendable.values("pk")).aggregate(n=distinct)["n"])
    return {"recipients": recipients, "consent_filtered": consent,
            "not_allowed": None if consent is None else recipients - consent,
            "audience": broadcast.audience_count, "topic": topic}


STAT_COUNTS = {
    "messages": Q(),
    "held": Q(status=MessageStatus.QUEUED, not_before=HELD),
    "queued": Q(status=MessageStatus.QUEUED) & ~Q(not_before=HELD),
    "deferred": Q(status=MessageStatus.DEFERRED),
    "sending": Q(status=MessageStatus.SENDING),
    "sent": Q(sent_at__isnull=False),
    "delivered": abtest.DELIVERED,
    "blocked": Q(status=MessageStatus.BLOCKED),
    "bounced": Q(bounced_at__isnull=False) | Q(status=MessageStatus.BOUNCED),
    "failed": Q(status=MessageStatus.FAILED),
    "review": Q(status=MessageStatus.REVIEW),
    "cancelled": Q(status=MessageStatus.CANCELLED),
    "opened": abtest.DELIVERED & Q(opened_at__isnull=False),
    "clicked": abtest.DELIVERED & Q(clicked_at__isnull=False),
    "unsubscribed": abtest.DELIVERED & Q(unsubscribed_at__isnull=False),
    "complained": Q(complained_at__isnull=False),
}


def _rates(row: dict) -> dict:
    delivered = row["delivered"]
    for name, column in (("open_rate", "opened"), ("click_rate", "clicked"), ("unsubscribe_rate", "unsubscribed")):
        row[name] = row[column] / delivered if delivered else None
    return row


def broadcast_stats(*, broadcast: Broadcast) -> dict:
    """Progress and results in one aggregate query: `total` and `groups` (per variant label, and
    `rest` for the part of an A/B audience outside the test, or `all` without variants). Opens
    and clicks are human firsts; rates are over delivered messages."""
    labels = dict(BroadcastVariant.objects.filter(broadcast_id=broadcast.pk).values_list("pk", "label"))
    rows = (Message.objects.filter(workspace_id=broadcast.workspace_id, broadcast_id=broadcast.pk).order_by()
            .values("variant_id").annotate(**{k: Count("pk", filter=q) for k, q in STAT_COUNTS.items()}))
    total = dict.fromkeys(STAT_COUNTS, 0)
    groups = []
    for row in rows:
        variant_id = row.pop("variant_id")
        for key in STAT_COUNTS:
            total[key] += row[key]
        groups.append({"label": labels.get(variant_id, "?") if variant_id else ("rest" if labels else "all"),
                       **_rates(row)})
    groups.sort(key=lambda g: (g["label"] in ("rest", "all"), g["label"]))
    return {"total": _rates(total), "groups": groups}


def broadcast_variant_approvals(*, broadcast: Broadcast) -> list[dict]:
    """Whether each variant (A first; just A without an A/B test) can be sent, in one query: its
    template's approved version (what starting pins) and newest version with their states.
    `ready` is what starting checks: an approved version and the template not archived."""
    labels = [(v.label, v.version.template_id) for v in _variants(broadcast)] or [("A", broadcast.template_id)]
    newest = TemplateVersion.objects.filter(template=OuterRef("pk")).order_by("-number")
    templates = {t.pk: t for t in Template.objects.filter(workspace_id=broadcast.workspace_id,
                                                          pk__in=[pk for _, pk in labels])
                 .select_related("approved_version")
                 .annotate(newest_number=Subquery(newest.values("number")[:1]),
                           newest_status=Subquery(newest.values("status")[:1]),
                           newest_subject=Subquery(newest.values("subject")[:1]))}
    rows = []
    for label, template_id in labels:
        t = templates[template_id]
        approved = t.approved_version if (t.approved_version_id and
                                          t.approved_version.status == VersionStatus.APPROVED) else None
        ready = approved is not None and t.archived_at is None
        if t.archived_at is not None:
            state = "archived"
        elif approved is not None:
            state = "approved"
        else:
            state = t.newest_status or "draft"
        rows.append({
            "label": label, "template": t, "ready": ready, "state": state,
            "state_label": "archived" if state == "archived" else VersionStatus(state).label.lower(),
            "approved_number": approved.number if approved is not None else None,
            "subject": approved.subject if approved is not None else (t.newest_subject or ""),
            "newest_number": t.newest_number, "newest_status": t.newest_status,
            "newer_pending": (approved is not None and t.newest_number != approved.number
                              and t.newest_status == VersionStatus.PENDING),
        })
    return rows
