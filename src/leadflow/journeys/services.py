"""Writing journeys: apply a definition (a new version when it changed), publish, pause, resume,
archive, enroll and remove people by hand.

Versions are immutable. Publishing makes a version the one new people enter; people already in
finish on the version they entered, unless the version maps old nodes to new ones (`migrate`):
then those waiting at a mapped node move to the new version at the mapped node, keeping their
timer. Pausing holds everyone in place (the engine skips paused journeys; nobody enters; goals
and exit rules still take people out as they are met); resuming lets them go on from the rows, so
whatever fell due meanwhile happens once; archiving lets no one in and lets those inside finish
(drains).
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction

from leadflow.contacts.models import Contact
from leadflow.core import clock
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, audit_record, name_clean, slug_unique
from leadflow.journeys import language as lang
from leadflow.journeys.engine import version_definition
from leadflow.journeys.models import (Enrollment, EnrollmentState, EnrollmentStep, Journey, JourneyStatus,
                                      JourneyVersion, StepKind)


BREAKER = "system:breaker"  # the actor of the circuit breaker's pauses and resumes


def _slug_for(workspace: Workspace, definition: lang.Definition) -> str:
    if definition.slug:
        return definition.slug
    return slug_unique(model=Journey, workspace_id=workspace.pk, name=definition.name, fallback="journey")


def journey_get_by_slug(*, workspace: Workspace, slug: str) -> Journey | None:
    return Journey.objects.filter(workspace=workspace, slug=slug).select_related("version").first()


def journey_apply(*, workspace: Workspace, data: object, actor: str, publish: bool = True,
                  migrate: dict | None = None) -> tuple[Journey, JourneyVersion, bool]:
    """Create or update the journey a definition describes (matched by its `slug`, else made from
    its name). A definition equal to the latest version changes nothing (so applying a file
    twice is harmless). Returns (journey, its latest version, whether anything changed)."""
    definition = lang.journey_parse(data)
    stored = lang.journey_dump(definition)
    with transaction.atomic():
        journey = journey_get_by_slug(workspace=workspace, slug=definition.slug) if definition.slug else None
        if journey is None:
            name = name_clean(definition.name, what="journey")
            journey = Journey.objects.create(workspace=workspace, slug=_slug_for(workspace, definition), name=name,
                                             description=definition.description)
            stored["slug"] = journey.slug
            audit_record(workspace=workspace, actor=actor, action="journey.create", target=f"journey:{journey.pk}",
                         data={"name": name})
        else:
            journey = Journey.objects.select_for_update().get(pk=journey.pk)
        latest = journey.versions.order_by("-number").first()
        if latest is not None and latest.definition == stored and not migrate:
            if publish and journey.version_id != latest.pk:
                journey = journey_publish(journey=journey, version=latest, actor=actor)
                return journey, latest, True
            return journey, latest, False
        version = JourneyVersion.objects.create(workspace=workspace, journey=journey,
                                                number=(latest.number + 1) if latest else 1,
                                                definition=stored, migrate=migrate or {}, actor=actor)
        journey.name = name_clean(definition.name, what="journey")
        journey.description = definition.description
        journey.updated_at = clock.now()
        journey.save(update_fields=["name", "description", "updated_at"])
        audit_record(workspace=workspace, actor=actor, action="journey.version", target=f"journey:{journey.pk}",
                     data={"version": version.number})
        if publish:
            journey = journey_publish(journey=journey, version=version, actor=actor)
    return journey, version, True


def journey_migrate_check(previous: lang.Definition | None, definition: lang.Definition, migrate: dict) -> None:
    """Refuse a node map that names nodes the versions do not have or moves people between node
    types (ServiceError naming the bad entry)."""
    if not migrate:
        return
    if previous is None:
        raise ServiceError("migrate: there is no published version to migrate people from")
    if not isinstance(migrate, dict):
        raise ServiceError("migrate: an object mapping old node ids to new node ids")
    for old, new in migrate.items():
        if previous.node(old) is None:
            raise ServiceError(f"migrate.{old}: the published version has no node {old!r}")
        if definition.node(new) is None:
            raise ServiceError(f"migrate.{old}: the new version has no node {new!r}")
        if type(previous.node(old)) is not type(definition.node(new)):
            raise ServiceError(f"migrate.{old}: {old!r} is a {previous.node(old).type} node and {new!r} a "
                               f"{definition.node(new).type}; people can only move to a node of the same type")


def journey_publish(*, journey: Journey, version: JourneyVersion, actor: str) -> Journey:
    """Make `version` the one new people enter (lint errors refuse it), migrate the people the
    version maps, and make a draft journey live."""
    from leadflow.journeys.lint import journey_lint

    definition = version_definition(version)
    problems = [f for f in journey_lint(workspace_id=journey.workspace_id, definition=definition, journey=journey)
                if f.level == "error"]
    if problems:
        raise ServiceError("cannot publish: " + "; ".join(f"{f.path}: {f.message}" if f.path else f.message
                                                          for f in problems[:5]))
    now = clock.now()
    with transaction.atomic():
        journey = Journey.objects.select_for_update().get(pk=journey.pk)
        previous = journey.version
        journey_migrate_check(version_definition(previous) if previous else None, definition, version.migrate)
        moved = 0
        if previous is not None and version.migrate:
            moved = _migrate(journey, previous, version, now)
        was_live = journey.status == JourneyStatus.LIVE
        journey.version = version
        if journey.status == JourneyStatus.DRAFT:
            journey.status = JourneyStatus.LIVE
        if journey.status == JourneyStatus.LIVE:
            before = version_definition(previous) if previous is not None and was_live else None
            _thresholds_baseline(journey, definition, before, now)
        journey.updated_at = now
        journey.save(update_fields=["version", "status", "updated_at"])
        JourneyVersion.objects.filter(pk=version.pk).update(published_at=now)
        audit_record(workspace=journey.workspace, actor=actor, action="journey.publish",
                     target=f"journey:{journey.pk}", data={"version": version.number, "migrated": moved})
    return journey


def _thresholds_baseline(journey: Journey, definition: lang.Definition, previous: lang.Definition | None,
                         now: dt.datetime) -> None:
    """Score and grade triggers enter people who cross the threshold while the journey is live:
    record who is already above when it goes live (`previous` None) or when a version adds a
    threshold the live one did not have, so that they are not taken for crossings."""
    from leadflow.journeys.triggers import thresholds_baseline, thresholds_of

    keys = None
    if previous is not None:
        keys = {t.key for t in thresholds_of(definition)} - {t.key for t in thresholds_of(previous)}
        if not keys:
            return
    thresholds_baseline(journey=journey, definition=definition, now=now, keys=keys)


def _migrate(journey: Journey, previous: JourneyVersion, version: JourneyVersion, now: dt.datetime) -> int:
    from leadflow.contacts.processing import rows_update

    rows = list(Enrollment.objects.select_for_update().filter(journey=journey, version=previous,
                                                              state=EnrollmentState.ACTIVE,
                                                              node__in=list(version.migrate)))
    steps = []
    for e in rows:
        new = version.migrate[e.node]
        steps.append(EnrollmentStep(workspace_id=e.workspace_id, journey_id=journey.pk, enrollment_id=e.pk,
                                    contact_id=e.contact_id, node=new, kind=StepKind.MIGRATED, at=now,
                                    detail={"from_version": previous.number, "to_version": version.number,
                                            "from_node": e.node}))
        e.version_id, e.node, e.updated_at = version.pk, new, now
    rows_update(Enrollment, rows, ["version", "node", "updated_at"])
    EnrollmentStep.objects.bulk_create(steps, batch_size=1000)
    return len(rows)


def journey_status_set(*, journey: Journey, status: str, actor: str, reason: str = "") -> Journey:
    """Pause (hold everyone in place), resume (go on), archive (drain) or reopen a journey."""
    allowed = {JourneyStatus.PAUSED: {JourneyStatus.LIVE},
               JourneyStatus.LIVE: {JourneyStatus.PAUSED, JourneyStatus.ARCHIVED},
               JourneyStatus.ARCHIVED: {JourneyStatus.LIVE, JourneyStatus.PAUSED}}
    if status not in allowed:
        raise ServiceError(f"a journey can be set to paused, live or archived, not {status!r}")
    now = clock.now()
    with transaction.atomic():
        journey = Journey.objects.select_for_update().get(pk=journey.pk)
        if journey.status == status:
            if status == JourneyStatus.PAUSED and journey.breaker_tripped_at and actor != BREAKER:
                # A person holds a journey the breaker paused: the breaker must not resume it.
                journey.breaker_tripped_at = None
                journey.paused_reason = (reason or f"held by {actor}")[:500]
                journey.save(update_fields=["breaker_tripped_at", "paused_reason"])
                audit_record(workspace=journey.workspace, actor=actor, action="journey.paused",
                             target=f"journey:{journey.pk}", data={"reason": reason, "held": True})
            return journey
        if journey.status not in allowed[status]:
            raise ServiceError(f"a {journey.status} journey cannot be made {status}"
                               + ("; publish a version first" if journey.status == JourneyStatus.DRAFT else ""))
        if status == JourneyStatus.LIVE and journey.version is not None:
            # Nobody entered while it was paused or archived: who crossed a threshold meanwhile
            # is recorded as above, not entered now.
            _thresholds_baseline(journey, version_definition(journey.version), None, now)
        journey.status = status
        journey.paused_reason = reason[:500] if status == JourneyStatus.PAUSED else ""
        journey.paused_at = now if status == JourneyStatus.PAUSED else None
        if status != JourneyStatus.PAUSED:
            journey.breaker_tripped_at = None
        journey.updated_at = now
        journey.save(update_fields=["status", "paused_reason", "paused_at", "breaker_tripped_at", "updated_at"])
        audit_record(workspace=journey.workspace, actor=actor, action=f"journey.{status}",
                     target=f"journey:{journey.pk}", data={"reason": reason} if reason else {})
    return journey


def journey_enroll(*, journey: Journey, contacts: list[Contact], actor: str, check_entry: bool = True,
                   data: dict | None = None) -> list[Enrollment]:
    """Enter people by hand or through the API (entry filter and re-entry policy apply unless
    `check_entry` is off for the filter)."""
    from leadflow.journeys.triggers import enroll_by_journey

    now = clock.now()
    stamp = now.strftime("%Y%m%d%H%M%S%f")
    with transaction.atomic():
        made = enroll_by_journey(workspace_id=journey.workspace_id, slug=journey.slug, now=now,
                                 check_entry=check_entry,
                                 entries=[(c, f"m{stamp}", {"manual": actor, **(data or {})}) for c in contacts])
        audit_record(workspace=journey.workspace, actor=actor, action="journey.enroll",
                     target=f"journey:{journey.pk}", data={"contacts": [c.pk for c in contacts][:100],
                                                           "entered": len(made)})
    return made


def journey_remove(*, journey: Journey, contacts: list[Contact], actor: str) -> int:
    """Take people out of a journey by hand (exited)."""
    from leadflow.journeys.triggers import enrollments_end

    with transaction.atomic():
        count = enrollments_end(workspace_id=journey.workspace_id, now=clock.now(), journey=journey,
                                contact_ids=[c.pk for c in contacts], state=EnrollmentState.EXITED,
                                reason=f"removed by {actor}")
        audit_record(workspace=journey.workspace, actor=actor, action="journey.remove",
                     target=f"journey:{journey.pk}", data={"contacts": [c.pk for c in contacts][:100],
                                                           "removed": count})
    return count


def journey_export(*, journey: Journey, version: JourneyVersion | None = None) -> dict:
    """The definition of a journey's published (else latest) version, ready to apply elsewhere."""
    version = version or journey.version or journey.versions.order_by("-number").first()
    if version is None:
        raise ServiceError(f"journey {journey.slug!r} has no version")
    data = dict(version.definition)
    data["slug"] = journey.slug
    return lang.journey_dump(lang.journey_parse(data))
