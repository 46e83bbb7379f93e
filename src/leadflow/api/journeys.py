"""Management API: journeys — list with key numbers, apply a definition (create or new version),
get (current definition and versions), update, publish, pause/resume/archive, lint, figures per
node, the people at a node, enroll and remove people, export, dry runs (simulate), and a contact's
journeys with their history.

A definition that is not valid answers 400 with `detail` and `path`, the part that is wrong
(`nodes[2].days`). Publishing runs the linter: errors refuse it, with every finding in the answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from django.db.models import Max
from ninja import Body, Field, Query, Router, Schema, Status
from ninja.errors import HttpError

from leadflow.api import cursor
from leadflow.api.auth import actor
from leadflow.contacts import selectors as contact_selectors
from leadflow.contacts.models import Contact
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys import selectors, services
from leadflow.journeys.engine import version_definition
from leadflow.journeys.language import JourneyError
from leadflow.journeys.models import Journey, JourneyStatus, JourneyVersion

router = Router(tags=["journeys"])

StatusName = Literal["draft", "live", "paused", "archived"]
NodeList = Literal["active", "passed", "converted", "exited", "failed", "completed"]


# --- schemas ----------------------------------------------------------------------------------

class FindingOut(Schema):
    level: str = Field(description="error (refuses publishing) or warning")
    code: str
    path: str
    message: str


class ProblemOut(Schema):
    detail: str
    path: str | None = Field(None, description="the part of the definition that is wrong, e.g. nodes[2].days")
    findings: list[FindingOut] = Field([], description="the linter's findings, when it refused publishing")


class NumbersOut(Schema):
    active: int = Field(description="people in the journey now")
    entered: int
    completed: int
    converted: int
    exited: int
    failed: int
    conversion_rate: float | None = Field(description="converted / entered")
    emails_sent: int


class VersionOut(Schema):
    number: int
    created_at: dt.datetime
    actor: str
    published_at: dt.datetime | None = Field(description="when it was last published")
    published: bool = Field(description="the version new people enter")
    active: int = Field(description="people on this version now")
    migrate: dict[str, str] = Field(description="nodes of the previous version whose people it moved: old → new")


class VersionDetailOut(VersionOut):
    definition: dict[str, Any]


class JourneyOut(Schema):
    id: int
    name: str
    slug: str
    description: str
    status: str
    version: int | None = Field(description="the published version's number")
    latest_version: int | None
    owner: str | None
    paused_reason: str
    paused_at: dt.datetime | None
    breaker_tripped_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    last_entry_at: dt.datetime | None
    numbers: NumbersOut


class JourneyDetailOut(JourneyOut):
    definition: dict[str, Any] | None = Field(description="the published version's definition, else the latest's")
    definition_version: int | None
    versions: list[VersionOut] = Field(description="newest first")


class JourneyPage(Schema):
    items: list[JourneyOut]
    next: str | None


class ApplyIn(Schema):
    definition: dict[str, Any] = Field(description="a journey definition (docs/journeys-as-code.md)")
    publish: bool = Field(False, description="publish the new version at once (the linter must find no error)")


class UpdateIn(ApplyIn):
    migrate: dict[str, str] | None = Field(None, description="move people waiting at nodes of the published "
                                                             "version to nodes of this one: old id → new id")


class PublishIn(Schema):
    version: int | None = Field(None, description="the version's number; default: the latest")


class StatusIn(Schema):
    reason: str = Field("", description="shown on the journey's page (pause only)")


class LintIn(Schema):
    definition: dict[str, Any]
    journey_id: int | None = Field(None, description="the journey it is for (its own conflicts are left out)")


class LintOut(Schema):
    findings: list[FindingOut]
    errors: int
    warnings: int


class EmailOut(Schema):
    queued: int
    sent: int
    delivered: int = Field(description="accepted by the receiving server and not bounced")
    opened: int
    clicked: int
    unsubscribed: int
    bounced: int
    blocked: int = Field(description="stopped by the consent gate")
    click_rate: float | None
    open_rate: float | None
    unsubscribe_rate: float | None


class NodeStatsOut(Schema):
    id: str
    type: str
    name: str
    waiting: int = Field(description="people at the node now")
    entered: int = Field(description="people who started here")
    passed: int = Field(description="passes through the node (sent, webhook queued and skipped included)")
    converted: int = Field(description="conversions credited to the node (the last one passed before the goal)")
    exited: int
    failed: int
    completed: int = Field(description="the journey ended after this node")
    outcomes: dict[str, int] = Field(description="passes by the way they went: yes/no, case N, a path's name, "
                                                 "event/timeout, treated/holdout")
    email: EmailOut | None = Field(description="send nodes: results of their emails (every version's)")


class LiftOut(Schema):
    holdout: int
    holdout_converted: int
    treated: int
    treated_converted: int
    holdout_rate: float | None
    treated_rate: float | None
    lift: float | None = Field(description="treated rate minus holdout rate")
    relative: float | None = Field(description="treated rate / holdout rate − 1")
    p_value: float | None = Field(description="two-proportion z-test")


class StatsOut(Schema):
    version: int | None = Field(description="the version whose nodes are listed")
    only_version: bool = Field(description="figures count only the people on that version")
    numbers: NumbersOut
    nodes: list[NodeStatsOut]
    other_nodes: list[NodeStatsOut] = Field(description="nodes only older versions have")
    lift: LiftOut | None


class EnrollmentOut(Schema):
    id: int
    contact_id: int
    email: str | None
    user_id: str | None
    state: str
    node: str
    version: int
    group: str
    entered_at: dt.datetime
    updated_at: dt.datetime
    due_at: dt.datetime | None
    wait_event: str
    ended_at: dt.datetime | None
    end_reason: str


class EnrollmentPage(Schema):
    items: list[EnrollmentOut]
    next: str | None


class PeopleIn(Schema):
    contact_ids: list[int] = []
    emails: list[str] = []
    user_ids: list[str] = []
    check_entry: bool = Field(True, description="apply the entry filter (the re-entry policy always applies)")


class EnrollReportOut(Schema):
    entered: int
    contact_ids: list[int] = Field(description="the contacts who entered")
    not_entered: list[int] = Field(description="contacts found but kept out (entry filter or re-entry policy)")
    unknown: list[dict[str, Any]]


class RemoveReportOut(Schema):
    removed: int
    unknown: list[dict[str, Any]]


class StepOut(Schema):
    node: str
    kind: str
    at: dt.datetime
    detail: dict[str, Any]


class ContactJourneyOut(Schema):
    enrollment_id: int
    journey_id: int
    journey: str
    journey_name: str
    version: int
    state: str
    node: str
    node_label: str
    group: str
    entered_at: dt.datetime
    due_at: dt.datetime | None
    ended_at: dt.datetime | None
    end_reason: str
    steps: list[StepOut]


class SimulatedEvent(Schema):
    at: str | float = Field(description="when: an offset from the start (2d, 12h, a number of days) or an "
                                        "ISO date-time")
    event: str
    properties: dict[str, Any] = {}


class SimulateIn(Schema):
    contact_id: int | None = Field(None, description="a real contact; none: a hypothetical person")
    traits: dict[str, Any] | None = Field(None, description="the hypothetical person's traits, or traits laid "
                                                             "over the contact's for the run")
    events: list[SimulatedEvent] = []
    start: dt.datetime | None = Field(None, description="default: now")
    days: float = Field(90, description="how long to follow them")


class SimulateDefinitionIn(SimulateIn):
    definition: dict[str, Any]


# --- helpers ----------------------------------------------------------------------------------

def _problem(exc: JourneyError) -> Status:
    return Status(400, {"detail": str(exc), "path": exc.path or None})


def _get(request, journey_id: int) -> Journey:
    journey = selectors.journey_get(workspace=request.workspace, journey_id=journey_id)
    if journey is None:
        raise HttpError(404, f"no journey {journey_id} in this workspace")
    return journey


def _version(journey: Journey, number: int | None) -> JourneyVersion | None:
    if number is None:
        return None
    version = selectors.journey_version_get(journey=journey, number=number)
    if version is None:
        raise HttpError(404, f"journey {journey.slug!r} has no version {number}")
    return version


def _lint(workspace_id: int, definition, journey: Journey | None) -> list:
    from leadflow.journeys.lint import journey_lint

    return journey_lint(workspace_id=workspace_id, definition=definition, journey=journey)


def _finding(f) -> dict:
    return {"level": f.level, "code": f.code, "path": f.path, "message": f.message}


def journeys_out(journeys: list[Journey]) -> list[dict]:
    numbers = selectors.journey_numbers(journeys=journeys)
    latest = dict(JourneyVersion.objects.filter(journey__in=journeys).order_by().values("journey_id")
                  .annotate(n=Max("number")).values_list("journey_id", "n"))
    return [{"id": j.pk, "name": j.name, "slug": j.slug, "description": j.description, "status": j.status,
             "version": j.version.number if j.version_id else None, "latest_version": latest.get(j.pk),
             "owner": j.owner.get_username() if j.owner_id else None, "paused_reason": j.paused_reason,
             "paused_at": j.paused_at, "breaker_tripped_at": j.breaker_tripped_at, "created_at": j.created_at,
             "updated_at": j.updated_at, "last_entry_at": j.last_entry_at,
             "numbers": numbers[j.pk].as_dict()} for j in journeys]


def _version_out(v: JourneyVersion, *, definition: bool = False) -> dict:
    out = {"number": v.number, "created_at": v.created_at, "actor": v.actor, "published_at": v.published_at,
           "published": v.published, "active": v.active, "migrate": v.migrate or {}}
    if definition:
        out["definition"] = v.definition
    return out


def _detail(journey: Journey) -> dict:
    journey = selectors.journey_get(workspace=journey.workspace, journey_id=journey.pk)
    versions = selectors.journey_versions(journey=journey)
    shown = next((v for v in versions if v.published), versions[0] if versions else None)
    return {**journeys_out([journey])[0], "definition": shown.definition if shown else None,
            "definition_version": shown.number if shown else None,
            "versions": [_version_out(v) for v in versions]}


def _publish(journey: Journey, version: JourneyVersion, request) -> Status | None:
    """Publish, or the answer that refuses it (the linter's errors)."""
    findings = _lint(journey.workspace_id, version_definition(version), journey)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        return Status(400, {"detail": "cannot publish: " + "; ".join(f"{f.path}: {f.message}" if f.path else
                                                                      f.message for f in errors[:5]),
                            "path": errors[0].path or None, "findings": [_finding(f) for f in findings]})
    services.journey_publish(journey=journey, version=version, actor=actor(request))
    return None


def _contacts(request, payload: PeopleIn) -> tuple[list[Contact], list[dict]]:
    from leadflow.segments.services import contacts_resolve

    found, unknown = contacts_resolve(workspace_id=request.workspace.pk, contact_ids=payload.contact_ids,
                                      emails=payload.emails, user_ids=payload.user_ids)
    contacts = list(Contact.objects.filter(workspace=request.workspace, pk__in=set(found.values())).order_by("pk"))
    return contacts, unknown


def _enrollment_out(e) -> dict:
    c = e.contact
    return {"id": e.pk, "contact_id": e.contact_id, "email": c.email or None, "user_id": c.user_id or None,
            "state": e.state, "node": e.node, "version": e.version.number, "group": e.group,
            "entered_at": e.entered_at, "updated_at": e.updated_at, "due_at": e.due_at, "wait_event": e.wait_event,
            "ended_at": e.ended_at, "end_reason": e.end_reason}


def _simulate(request, subject, payload: SimulateIn) -> list[dict]:
    from leadflow.journeys.simulate import journey_simulate

    contact = None
    if payload.contact_id is not None:
        contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=payload.contact_id)
        if contact is None:
            raise HttpError(404, f"no contact {payload.contact_id} in this workspace")
    events = [(e.at, e.event, e.properties) for e in payload.events]
    return journey_simulate(journey_or_definition=subject, workspace=request.workspace, contact=contact,
                            traits=payload.traits, events=events, start=payload.start, days=payload.days)


# --- routes -----------------------------------------------------------------------------------

@router.get("", response=JourneyPage, summary="List journeys, newest first, with their key numbers")
def journeys_list(request, status: StatusName | None = None,
                  limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                  next: str | None = Query(None, description="the `next` cursor of the previous page")):
    qs = selectors.journey_query(workspace=request.workspace, status=status).select_related("owner")
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": journeys_out(items), "next": following}


@router.post("", response={201: JourneyDetailOut, 200: JourneyDetailOut, 400: ProblemOut},
             summary="Apply a definition: create the journey (201) or add a version to the one with its slug (200)")
def journeys_apply(request, payload: ApplyIn):
    """The same as `leadflow journeys apply FILE`: a definition equal to the latest version changes
    nothing. The new version is a draft until published (`publish: true` or `/publish`)."""
    slug = payload.definition.get("slug")
    existed = bool(slug) and services.journey_get_by_slug(workspace=request.workspace, slug=slug) is not None
    try:
        journey, version, _ = services.journey_apply(workspace=request.workspace, data=payload.definition,
                                                     actor=actor(request), publish=False)
    except JourneyError as exc:
        return _problem(exc)
    if payload.publish:
        refused = _publish(journey, version, request)
        if refused is not None:
            return refused
    return Status(200 if existed else 201, _detail(journey))


@router.post("/lint", response={200: LintOut, 400: ProblemOut},
             summary="Lint a definition without saving it (the checks publishing runs)")
def journeys_lint(request, payload: LintIn):
    journey = _get(request, payload.journey_id) if payload.journey_id is not None else None
    try:
        definition = lang.journey_parse(payload.definition)
    except JourneyError as exc:
        return _problem(exc)
    findings = _lint(request.workspace.pk, definition, journey)
    return {"findings": [_finding(f) for f in findings], "errors": sum(f.level == "error" for f in findings),
            "warnings": sum(f.level != "error" for f in findings)}


@router.post("/simulate", response={200: list[dict[str, Any]], 400: ProblemOut},
             summary="Dry run of an unsaved definition: the path one person would take, nothing sent or kept")
def journeys_simulate_definition(request, payload: SimulateDefinitionIn):
    try:
        return _simulate(request, payload.definition, payload)
    except JourneyError as exc:
        return _problem(exc)


@router.get("/contacts/{contact_id}", response=list[ContactJourneyOut],
            summary="A contact's journeys, newest first, each with its step history")
def contact_journeys(request, contact_id: int):
    contact = contact_selectors.contact_get(workspace=request.workspace, contact_id=contact_id)
    if contact is None:
        raise HttpError(404, f"no contact {contact_id} in this workspace")
    return [{"enrollment_id": e.pk, "journey_id": e.journey_id, "journey": e.journey.slug,
             "journey_name": e.journey.name, "version": e.version.number, "state": e.state, "node": e.node,
             "node_label": e.node_label, "group": e.group, "entered_at": e.entered_at, "due_at": e.due_at,
             "ended_at": e.ended_at, "end_reason": e.end_reason,
             "steps": [{"node": s.node, "kind": s.kind, "at": s.at, "detail": s.detail} for s in e.steps_list]}
            for e in selectors.contact_journeys(contact=contact)]


@router.get("/{journey_id}", response=JourneyDetailOut,
            summary="One journey: key numbers, the current definition and every version")
def journeys_get(request, journey_id: int):
    return _detail(_get(request, journey_id))


@router.put("/{journey_id}", response={200: JourneyDetailOut, 400: ProblemOut},
            summary="A new version of a journey (optionally moving people, optionally published at once)")
def journeys_update(request, journey_id: int, payload: UpdateIn):
    journey = _get(request, journey_id)
    data = dict(payload.definition)
    if data.get("slug") not in (None, journey.slug):
        return Status(400, {"detail": f"slug: this journey's slug is {journey.slug!r}; a journey's slug never "
                                      "changes", "path": "slug"})
    data["slug"] = journey.slug
    try:
        definition = lang.journey_parse(data)
        if payload.migrate:
            previous = version_definition(journey.version) if journey.version else None
            services.journey_migrate_check(previous, definition, payload.migrate)
        journey, version, _ = services.journey_apply(workspace=request.workspace, data=data, actor=actor(request),
                                                     publish=False, migrate=payload.migrate or None)
    except JourneyError as exc:
        return _problem(exc)
    except ServiceError as exc:
        message = str(exc)
        path = message.split(":", 1)[0] if message.startswith("migrate") else None
        return Status(400, {"detail": message, "path": path})
    if payload.publish:
        refused = _publish(journey, version, request)
        if refused is not None:
            return refused
    return _detail(journey)


@router.post("/{journey_id}/publish", response={200: JourneyDetailOut, 400: ProblemOut},
             summary="Publish a version (default: the latest): new people enter it; a draft becomes live")
def journeys_publish(request, journey_id: int, payload: PublishIn | None = Body(None)):
    journey = _get(request, journey_id)
    number = payload.version if payload else None
    version = _version(journey, number) if number is not None else journey.versions.order_by("-number").first()
    refused = _publish(journey, version, request)
    return refused if refused is not None else _detail(journey)


@router.post("/{journey_id}/pause", response=JourneyDetailOut,
             summary="Pause: everyone stays where they are and nobody enters")
def journeys_pause(request, journey_id: int, payload: StatusIn | None = Body(None)):
    journey = services.journey_status_set(journey=_get(request, journey_id), status=JourneyStatus.PAUSED,
                                          actor=actor(request), reason=payload.reason if payload else "")
    return _detail(journey)


@router.post("/{journey_id}/resume", response=JourneyDetailOut,
             summary="Resume a paused (or reopen an archived) journey: people go on from where they were")
def journeys_resume(request, journey_id: int):
    journey = services.journey_status_set(journey=_get(request, journey_id), status=JourneyStatus.LIVE,
                                          actor=actor(request))
    return _detail(journey)


@router.post("/{journey_id}/archive", response=JourneyDetailOut,
             summary="Archive: nobody new enters; the people inside finish (drain)")
def journeys_archive(request, journey_id: int):
    journey = services.journey_status_set(journey=_get(request, journey_id), status=JourneyStatus.ARCHIVED,
                                          actor=actor(request))
    return _detail(journey)


@router.get("/{journey_id}/versions", response=list[VersionDetailOut],
            summary="Every version with its definition, newest first")
def journeys_versions(request, journey_id: int):
    return [_version_out(v, definition=True) for v in selectors.journey_versions(journey=_get(request, journey_id))]


@router.get("/{journey_id}/lint", response=LintOut, summary="Lint a stored version (default: the latest)")
def journeys_lint_version(request, journey_id: int, version: int | None = None):
    journey = _get(request, journey_id)
    stored = _version(journey, version) if version is not None else journey.versions.order_by("-number").first()
    findings = _lint(journey.workspace_id, version_definition(stored), journey)
    return {"findings": [_finding(f) for f in findings], "errors": sum(f.level == "error" for f in findings),
            "warnings": sum(f.level != "error" for f in findings)}


@router.get("/{journey_id}/stats", response=StatsOut,
            summary="Figures per node: waiting, passed, converted, exited, failed, email results; holdout lift")
def journeys_stats(request, journey_id: int,
                   version: int | None = Query(None, description="only the people on this version")):
    journey = _get(request, journey_id)
    stats = selectors.journey_node_stats(journey=journey, version=_version(journey, version))
    return {"version": stats.version.number if stats.version else None, "only_version": version is not None,
            "numbers": stats.numbers.as_dict(), "nodes": [n.as_dict() for n in stats.nodes],
            "other_nodes": [n.as_dict() for n in stats.other_nodes],
            "lift": stats.lift.as_dict() if stats.lift else None}


@router.get("/{journey_id}/enrollments", response={200: EnrollmentPage, 400: ProblemOut},
            summary="The people of a journey, newest first; with `node`, those at (or through) that node")
def journeys_enrollments(request, journey_id: int, node: str | None = None,
                         state: str | None = Query(None, description="without node: active, completed, converted, "
                                                                     "exited or failed; with node: active (who "
                                                                     "waits there, the default), passed, converted, "
                                                                     "exited, failed or completed"),
                         limit: int = Query(50, ge=1, le=cursor.MAX_LIMIT),
                         next: str | None = Query(None, description="the `next` cursor of the previous page")):
    journey = _get(request, journey_id)
    qs = selectors.journey_enrollments(journey=journey, node=node, state=state)
    items, following = cursor.page(qs, cursor=next, limit=limit, order=("-pk",))
    return {"items": [_enrollment_out(e) for e in items], "next": following}


@router.post("/{journey_id}/enrollments", response=EnrollReportOut,
             summary="Enroll contacts by id, email or user id (the journey must be live)")
def journeys_enroll(request, journey_id: int, payload: PeopleIn):
    journey = _get(request, journey_id)
    contacts, unknown = _contacts(request, payload)
    made = services.journey_enroll(journey=journey, contacts=contacts, actor=actor(request),
                                   check_entry=payload.check_entry)
    entered = sorted(e.contact_id for e in made)
    return {"entered": len(entered), "contact_ids": entered,
            "not_entered": [c.pk for c in contacts if c.pk not in set(entered)], "unknown": unknown}


@router.delete("/{journey_id}/enrollments", response=RemoveReportOut,
               summary="Take contacts out of a journey (by id, email or user id); they end as exited")
def journeys_remove(request, journey_id: int, payload: PeopleIn):
    journey = _get(request, journey_id)
    contacts, unknown = _contacts(request, payload)
    return {"removed": services.journey_remove(journey=journey, contacts=contacts, actor=actor(request)),
            "unknown": unknown}


@router.get("/{journey_id}/export", response=dict[str, Any],
            summary="The definition of the published (else latest) version, or of `version`, ready to apply")
def journeys_export(request, journey_id: int, version: int | None = None):
    journey = _get(request, journey_id)
    return services.journey_export(journey=journey, version=_version(journey, version))


@router.post("/{journey_id}/simulate", response={200: list[dict[str, Any]], 400: ProblemOut},
             summary="Dry run: the path one person (real or hypothetical) would take and the emails they would "
                     "get, with dates; nothing is sent or kept")
def journeys_simulate(request, journey_id: int, payload: SimulateIn):
    return _simulate(request, _get(request, journey_id), payload)
