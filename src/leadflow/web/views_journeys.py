"""Journey pages: the list with each journey's key numbers; a journey's page (its graph with the
figures on every node, the people at a node, who waits for a sales rep, holdout lift, versions with
their definitions, lint findings, publish, pause/resume/archive, enrolling people by hand); the dry
run of one person (`journeys.simulate`); and the form-based editor (rows of fields per trigger,
goal and node, plus a YAML/JSON box), where saving makes a new version and publishing is a
separate step on the journey's page."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

import orjson
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys import selectors
from leadflow.journeys import services as journey_services
from leadflow.journeys.engine import version_definition
from leadflow.journeys.language import JourneyError
from leadflow.journeys.models import Journey, JourneyStatus
from leadflow.lifecycle.models import DEFAULT_STAGES
from leadflow.messaging.models import SendingServer, Template
from leadflow.segments.models import Segment
from leadflow.tracking.models import Form
from leadflow.web import journey_editor as editor
from leadflow.web.journey_graph import TYPE_LABELS, journey_graph, node_summary, trigger_summary
from leadflow.web.views import _actor, _page, workspace_view

PEOPLE_PER_PAGE = 50
VERSIONS_SHOWN = 20
LIST_LABELS = {"active": "Waiting here", "passed": "Passed", "converted": "Converted", "exited": "Exited",
               "failed": "Failed", "completed": "Completed"}
# action → (status it sets, message)
STATUS_ACTIONS = {
    "pause": (JourneyStatus.PAUSED, "Paused: everyone stays where they are and nobody enters until you resume."),
    "resume": (JourneyStatus.LIVE, "Live again: people go on from where they were."),
    "archive": (JourneyStatus.ARCHIVED, "Archived: nobody new enters; the people inside finish."),
}


def _journey(request: HttpRequest, journey_id: int) -> Journey:
    journey = selectors.journey_get(workspace=request.workspace, journey_id=journey_id)
    if journey is None:
        raise Http404("no such journey")
    return journey


def _lint(request: HttpRequest, definition: lang.Definition, journey: Journey | None) -> list:
    from leadflow.journeys.lint import journey_lint

    return journey_lint(workspace_id=request.workspace.pk, definition=definition, journey=journey)


@workspace_view()
def journeys_list(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    if status not in JourneyStatus.values:
        status = ""
    journeys = selectors.journey_list(workspace=request.workspace, status=status or None)
    return render(request, "web/journeys/list.html", {
        "section": "journeys", "journeys": journeys, "status": status, "statuses": JourneyStatus.choices})


# --- a journey's page -----------------------------------------------------------------------------

def _pct(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def _lift_view(lift) -> dict | None:
    """The holdout comparison in words."""
    if lift is None:
        return None
    if lift.p_value is None:
        significance = "Not enough conversions yet to tell whether the difference is real."
    elif lift.p_value < 0.05:
        significance = f"The difference is significant (p = {lift.p_value:.3g})."
    else:
        significance = f"The difference may be chance so far (p = {lift.p_value:.3g})."
    lift_pp = None if lift.lift is None else f"{lift.lift * 100:+.1f} percentage points"
    return {"treated": _pct(lift.treated_rate), "holdout": _pct(lift.holdout_rate), "lift": lift_pp,
            "relative": None if lift.relative is None else _pct(lift.relative, signed=True),
            "significance": significance}


def _status_actions(journey: Journey) -> list[tuple[str, str]]:
    """(action, button label) the journey's status allows."""
    if journey.status == JourneyStatus.LIVE:
        return [("pause", "Pause"), ("archive", "Archive")]
    if journey.status == JourneyStatus.PAUSED:
        return [("resume", "Resume"), ("archive", "Archive")]
    if journey.status == JourneyStatus.ARCHIVED:
        return [("resume", "Reopen")]
    return []


@workspace_view()
def journey_detail(request: HttpRequest, journey_id: int) -> HttpResponse:
    journey = _journey(request, journey_id)
    number = request.GET.get("version", "")
    version = selectors.journey_version_get(journey=journey, number=int(number)) if number.isdigit() else None
    if number and version is None:
        raise Http404("no such version")
    stats = selectors.journey_node_stats(journey=journey, version=version)
    graph = journey_graph(stats.definition, stats.by_id()) if stats.definition is not None else None
    node, shown_list = request.GET.get("node", ""), request.GET.get("list", "active")
    if shown_list not in LIST_LABELS:
        shown_list = "active"
    people = selectors.journey_enrollments(journey=journey, node=node or None,
                                           state=shown_list if node else None).order_by("-pk")
    versions = selectors.journey_versions(journey=journey)
    latest = versions[0] if versions else None
    pending = latest if latest is not None and latest.pk != journey.version_id else None
    findings = []
    if pending is not None:
        try:
            findings = _lint(request, version_definition(pending), journey)
        except JourneyError as exc:
            findings = [{"level": "error", "code": "invalid", "path": exc.path, "message": exc.reason}]
    for v in versions[:VERSIONS_SHOWN]:
        v.text = editor.yaml_text(v.definition)
    definition = stats.definition
    stored = stats.version.definition if stats.version is not None else {}
    query = urlencode([(k, v) for k, v in (("version", number), ("node", node), ("list", node and shown_list)) if v])
    people_query = query + "&" if query else ""
    return render(request, "web/journeys/detail.html", {
        "section": "journeys", "journey": journey, "stats": stats, "graph": graph, "version": version,
        "numbers": stats.numbers, "lift": stats.lift, "lift_view": _lift_view(stats.lift),
        "people_query": people_query, "versions": versions[:VERSIONS_SHOWN],
        "more_versions": max(0, len(versions) - VERSIONS_SHOWN), "pending": pending, "findings": findings,
        "node": node, "node_stats": stats.by_id().get(node) if node else None, "shown_list": shown_list,
        "lists": LIST_LABELS.items(), "page": _page(request, people, PEOPLE_PER_PAGE),
        "actions": _status_actions(journey), "type_labels": TYPE_LABELS,
        "node_rows": [(n, TYPE_LABELS.get(n.type, n.type), node_summary(definition.node(n.id)))
                      for n in stats.nodes] if definition else [],
        "triggers": [trigger_summary(t) for t in stored.get("triggers", [])],
        "goals": [(g["name"], f"does “{g['event']}”" if g.get("event") else "matches a filter")
                  for g in stored.get("goals", [])],
        "stuck": selectors.journey_stuck(journey=journey),
    })


@workspace_view(edit=True)
@require_POST
def journey_publish_view(request: HttpRequest, journey_id: int) -> HttpResponse:
    journey = _journey(request, journey_id)
    number = request.POST.get("version", "")
    version = selectors.journey_version_get(journey=journey, number=int(number)) if number.isdigit() else None
    if version is None:
        raise Http404("no such version")
    try:
        journey_services.journey_publish(journey=journey, version=version, actor=_actor(request))
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Version {version.number} is published: new people enter it.")
    return redirect("web:journey", journey.pk)


@workspace_view(edit=True)
@require_POST
def journey_status_view(request: HttpRequest, journey_id: int, action: str) -> HttpResponse:
    journey = _journey(request, journey_id)
    if action not in STATUS_ACTIONS:
        raise Http404("no such action")
    status, done = STATUS_ACTIONS[action]
    try:
        journey_services.journey_status_set(journey=journey, status=status, actor=_actor(request),
                                            reason=request.POST.get("reason", "").strip())
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, done)
    return redirect("web:journey", journey.pk)


@workspace_view(edit=True)
@require_POST
def journey_people_change(request: HttpRequest, journey_id: int) -> HttpResponse:
    """Enroll people by hand (by email, one a line) or take them out."""
    from leadflow.contacts.models import Contact
    from leadflow.segments.services import contacts_resolve

    journey = _journey(request, journey_id)
    remove = request.POST.get("action") == "remove"
    emails = [e.strip() for e in request.POST.get("emails", "").replace(",", "\n").splitlines() if e.strip()]
    found, unknown = contacts_resolve(workspace_id=journey.workspace_id, emails=emails)
    contacts = list(Contact.objects.filter(workspace_id=journey.workspace_id, pk__in=set(found.values())))
    try:
        if remove:
            done = journey_services.journey_remove(journey=journey, contacts=contacts, actor=_actor(request))
            text = f"Took {done} {'person' if done == 1 else 'people'} out"
        else:
            done = len(journey_services.journey_enroll(journey=journey, contacts=contacts, actor=_actor(request)))
            text = f"Enrolled {done} {'person' if done == 1 else 'people'}"
            if done < len(contacts):
                text += f"; {len(contacts) - done} not let in (entry filter or re-entry policy)"
    except ServiceError as exc:
        messages.error(request, str(exc))
    else:
        if unknown:
            text += f"; {len(unknown)} not found"
        messages.success(request, text + ".")
    return redirect("web:journey", journey.pk)


@workspace_view()
def journey_export_view(request: HttpRequest, journey_id: int) -> HttpResponse:
    """The definition as a file to keep in git (`leadflow journeys apply FILE`): YAML or JSON."""
    journey = _journey(request, journey_id)
    number = request.GET.get("version", "")
    version = selectors.journey_version_get(journey=journey, number=int(number)) if number.isdigit() else None
    data = journey_services.journey_export(journey=journey, version=version)
    if request.GET.get("format") == "json":
        response = HttpResponse(orjson.dumps(data, option=orjson.OPT_INDENT_2), content_type="application/json")
        extension = "json"
    else:
        response = HttpResponse(editor.yaml_text(data), content_type="application/yaml; charset=utf-8")
        extension = "yaml"
    response["Content-Disposition"] = f'attachment; filename="journey-{journey.slug}.{extension}"'
    return response


# --- the dry run ----------------------------------------------------------------------------------

DRY_RUN_MATCHES = 10
# What each kind of timeline row says, in the words of the page.
DRY_RUN_KINDS = {"event": "Event", "entered": "Enters", "passed": "Passes", "sent": "Email", "webhook": "Webhook",
                 "waiting": "Waits", "skipped": "Skipped", "converted": "Converts", "exited": "Exits",
                 "completed": "Completes the journey", "failed": "Fails", "migrated": "Moved",
                 "horizon": "Still in the journey", "not_entered": "Does not enter"}


def _dry_run_contact(request: HttpRequest, text: str, picked: str):
    """(the contact, other candidates): by id when one was picked from a list, else by exact email,
    user id or id, else the contacts whose email, name or company contains `text` (one: that
    one; several: the caller offers them)."""
    from leadflow.contacts import selectors as contact_selectors

    workspace = request.workspace
    if picked.isdigit():
        contact = contact_selectors.contact_get(workspace=workspace, contact_id=int(picked))
        if contact is None:
            raise ServiceError("that contact is no longer in this workspace: search again")
        return contact, []
    text = text.strip()
    if not text:
        raise ServiceError("enter the email of the contact to follow (or part of it), or choose a hypothetical "
                           "person")
    contact = None
    for kind in ("email", "user_id"):
        contact = contact or contact_selectors.contact_get_by_identity(workspace=workspace, kind=kind, value=text)
    if contact is None and text.isdigit():
        contact = contact_selectors.contact_get(workspace=workspace, contact_id=int(text))
    if contact is not None:
        return contact, []
    matches = list(contact_selectors.contact_search(workspace=workspace, q=text).order_by("email", "pk")
                   [:DRY_RUN_MATCHES + 1])
    if not matches:
        raise ServiceError(f"no contact matches {text!r}: enter their email, or part of it")
    if len(matches) == 1:
        return matches[0], []
    return None, matches


def _dry_run_zone(traits: dict, contact):
    from zoneinfo import ZoneInfo

    name = str(traits.get("timezone") or (contact.timezone if contact is not None else "") or "UTC")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError):
        return ZoneInfo("UTC")


def _dry_run_rows(timeline: list[dict], begin, zone, definition: lang.Definition) -> list[dict]:
    """The timeline as the page shows it: day, local time, what happened, at which step."""
    rows = []
    for row in timeline:
        detail = row.get("detail") or {}
        kind = row["kind"]
        node = definition.node(row.get("node") or "") if row.get("node") else None
        if kind == "event":
            props = ", ".join(f"{k} = {v}" for k, v in (row.get("properties") or {}).items())
            what = row["event"] + (f" ({props})" if props else "")
        elif kind == "horizon":
            due, event = detail.get("due_at"), detail.get("waiting_for")
            what = detail.get("reason") or " ".join(filter(None, [
                f"waiting for “{event}”" if event else "",
                f"{'or ' if event else ''}next step {due.astimezone(zone):%Y-%m-%d %H:%M}" if due else ""]))
        else:
            what = detail.get("goal") or detail.get("reason") or detail.get("outcome") or detail.get("group") or ""
        rows.append({"kind": kind, "label": DRY_RUN_KINDS.get(kind, kind),
                     "at": f"{row['at'].astimezone(zone):%a %Y-%m-%d %H:%M}",
                     "day": (row["at"] - begin).total_seconds() / 86400, "node": row.get("node", ""),
                     "step": (node.name or node_summary(node)) if node is not None else "",
                     "type": TYPE_LABELS.get(row.get("type", ""), row.get("type", "")), "what": str(what),
                     "email": row.get("email")})
    return rows


@workspace_view()
def journey_dry_run(request: HttpRequest, journey_id: int) -> HttpResponse:
    """Follow one person, real or hypothetical, through the journey for some days: the steps and
    emails with their dates, and nothing sent or kept (`journeys.simulate.journey_simulate`)."""
    from leadflow.core import clock
    from leadflow.journeys.simulate import (MAX_DAYS, journey_simulate, simulation_events_parse,
                                            simulation_traits_parse)

    journey = _journey(request, journey_id)
    versions = selectors.journey_versions(journey=journey)
    default = journey.version or (versions[0] if versions else None)
    form = {"who": "hypothetical", "contact": "", "traits": "", "events": "", "days": "90", "start": "",
            "version": str(default.number) if default else ""}
    error, result, matches = "", None, []
    if request.method == "POST":
        form.update({key: request.POST.get(key, form[key]) for key in form})
        try:
            version = next((v for v in versions if str(v.number) == form["version"].strip()), None)
            if version is None:
                raise ServiceError("choose a version of the journey to follow" if versions else
                                   "this journey has no version yet: save one in the editor first")
            try:
                days = float(form["days"].strip().replace(",", "."))
            except ValueError:
                raise ServiceError(f"days: {form['days']!r} is not a number") from None
            if not 0 < days <= MAX_DAYS:
                raise ServiceError(f"days: more than 0 and at most {MAX_DAYS}")
            start = None
            if form["start"].strip():
                try:
                    start = clock.parse_iso(form["start"].strip())
                except ValueError:
                    raise ServiceError(f"start: {form['start']!r} is not a date and time such as "
                                       "2026-03-02T09:00Z") from None
            traits = simulation_traits_parse(form["traits"])
            events = simulation_events_parse(form["events"])
            contact = None
            if form["who"] == "contact":
                contact, matches = _dry_run_contact(request, form["contact"], request.POST.get("pick", ""))
                if contact is None:
                    query = form["contact"].strip()
                    raise ServiceError(f"more than {DRY_RUN_MATCHES} contacts match {query!r}: type more of the email"
                                       if len(matches) > DRY_RUN_MATCHES else
                                       f"{len(matches)} contacts match {query!r}: choose one")
                form["contact"] = contact.email or contact.user_id or str(contact.pk)
            start = (start or clock.now()).astimezone(dt.timezone.utc)
            timeline = journey_simulate(journey_or_definition=version.definition, workspace=request.workspace,
                                        contact=contact, traits=traits or None, events=events, start=start,
                                        days=days)
            zone = _dry_run_zone(traits, contact)
            rows = _dry_run_rows(timeline, start, zone, version_definition(version))
            result = {"rows": rows, "contact": contact, "version": version, "days": days, "zone": zone.key,
                      "start": f"{start.astimezone(zone):%a %Y-%m-%d %H:%M}",
                      "emails": sum(1 for r in rows if r["kind"] == "sent")}
        except (ServiceError, JourneyError) as exc:
            error = str(exc)
    return render(request, "web/journeys/dry_run.html", {
        "section": "journeys", "journey": journey, "versions": versions, "form": form, "error": error,
        "result": result, "matches": matches[:DRY_RUN_MATCHES], "max_days": MAX_DAYS})


# --- the editor -----------------------------------------------------------------------------------

def _options(request: HttpRequest, journey: Journey | None) -> dict:
    """The menus the editor offers: templates, stages, journeys, lists, segments, forms, scores."""
    workspace = request.workspace
    segments = list(Segment.objects.filter(workspace=workspace, archived_at__isnull=True).order_by("name")
                    .values_list("slug", "name", "kind"))
    journeys = Journey.objects.filter(workspace=workspace).order_by("name")
    if journey is not None:
        journeys = journeys.exclude(pk=journey.pk)
    return {
        "template": [(slug, f"{name}{'' if approved else ' (no approved version)'}") for slug, name, approved in
                     Template.objects.filter(workspace=workspace, archived_at__isnull=True, kind="marketing")
                     .order_by("name").values_list("slug", "name", "approved_version")],
        "stage": [(s["key"], s["label"]) for s in DEFAULT_STAGES],
        "journey": list(journeys.values_list("slug", "name")),
        "list": [(slug, name) for slug, name, kind in segments if kind == "static"],
        "segment": [(slug, name) for slug, name, _ in segments],
        "form": list(Form.objects.filter(workspace=workspace, archived_at__isnull=True).order_by("name")
                     .values_list("slug", "name")),
        "score": [(s, s.replace("_", " ")) for s in editor.SCORES],
        "server": [(name, name) for name in SendingServer.objects.filter(workspace=workspace).order_by("name")
                   .values_list("name", flat=True)],
    }


def _row_view(section: str, index: int | str, row: editor.Row, options: dict) -> dict:
    prefix = f"{section}-{index}"
    return {"index": index, "number": index + 1 if isinstance(index, int) else "+", "prefix": prefix,
            "kind": row.kind, "values": row.values, "error": row.error,
            "fields": editor.field_views(prefix, editor.params_of(section, row.kind), row.values, options)}


def _rows(section: str, rows: list[editor.Row], options: dict) -> list[dict]:
    return [_row_view(section, i, row, options) for i, row in enumerate(rows)]


def _kind_templates(options: dict) -> list[dict]:
    """Empty fields of every node type and trigger kind, for the page's script to swap in when a
    row's type changes (rows are numbered where the placeholder __prefix__ stands)."""
    out = []
    for section, table in (("nodes", editor.NODE_PARAMS), ("triggers", editor.TRIGGER_PARAMS)):
        for kind, params in table.items():
            prefix = f"{section}-__prefix__"
            out.append({"section": section, "kind": kind,
                        "fields": editor.field_views(prefix, params, editor.blank_row(section, kind).values, options)})
    return out


def _migration_rows(request: HttpRequest, journey: Journey | None) -> list[dict]:
    """Nodes of the published version where people wait now: each may be mapped to a new node."""
    if journey is None or journey.version is None:
        return []
    definition = version_definition(journey.version)
    waiting = selectors.journey_waiting_by_node(journey=journey, version=journey.version)
    return [{"node": node_id, "waiting": n, "type": getattr(definition.node(node_id), "type", ""),
             "value": request.POST.get(f"migrate-{node_id}", "") if request.method == "POST" else ""}
            for node_id, n in sorted(waiting.items())]


def _migrate_map(rows: list[dict], definition: lang.Definition, journey: Journey | None) -> dict:
    """The people the marketer chose to move (old node → new node), checked against the new
    definition (the same checks publishing makes)."""
    migrate = {row["node"]: row["value"].strip() for row in rows if row["value"].strip()}
    if migrate and journey is not None and journey.version is not None:
        journey_services.journey_migrate_check(version_definition(journey.version), definition, migrate)
    return migrate


@workspace_view(edit=True)
def journey_edit(request: HttpRequest, journey_id: int | None = None) -> HttpResponse:
    journey = _journey(request, journey_id) if journey_id else None
    latest = journey.versions.order_by("-number").first() if journey else None
    options = _options(request, journey)
    error: JourneyError | str | None = None
    findings = None
    advanced = None
    if request.method == "POST":
        action = request.POST.get("action", "save")
        state = editor.state_from_post(request.POST)
        if action.startswith("add-") and action[4:] in editor.SECTIONS:
            getattr(state, action[4:]).append(editor.blank_row(action[4:]))
        elif action != "refresh":
            try:
                if action == "save-advanced":
                    advanced = request.POST.get("advanced", "")
                    data = editor.text_load(advanced)
                    if not isinstance(data, dict):
                        raise JourneyError("a journey definition is an object with name, triggers and nodes")
                    if journey is not None:
                        data["slug"] = journey.slug
                    elif data.get("slug") and journey_services.journey_get_by_slug(
                            workspace=request.workspace, slug=data["slug"]) is not None:
                        raise JourneyError(f"a journey {data['slug']!r} exists already; edit it instead",
                                           path="slug")
                else:
                    data = editor.state_definition(state, slug=journey.slug if journey else None)
                definition = lang.journey_parse(data)
                if action == "check":
                    findings = _lint(request, definition, journey)
                else:
                    migrate = _migrate_map(_migration_rows(request, journey), definition, journey)
                    journey, version, changed = journey_services.journey_apply(
                        workspace=request.workspace, data=data, actor=_actor(request), publish=False,
                        migrate=migrate or None)
                    if changed:
                        messages.success(request, f"Saved as version {version.number}. Look at the linter's "
                                                  "findings, then publish it when it is ready.")
                    else:
                        messages.success(request, f"Nothing changed: version {version.number} is the same.")
                    return redirect("web:journey", journey.pk)
            except JourneyError as exc:
                error = exc
                if action != "save-advanced":
                    editor.state_row_errors(state, exc.path, exc.reason)
            except ServiceError as exc:
                error = str(exc)
        if advanced is None:
            try:
                advanced = editor.yaml_text(editor.state_definition(state, slug=journey.slug if journey else None))
            except JourneyError:
                advanced = request.POST.get("advanced", "")
    elif latest is not None:
        state = editor.state_from_definition(latest.definition)
        advanced = editor.yaml_text(latest.definition)
    else:
        state = editor.blank_state()
        advanced = ""
    node_ids = [r.values.get("id", "") for r in state.nodes if r.values.get("id")]
    return render(request, "web/journeys/edit.html", {
        "section": "journeys", "journey": journey, "latest": latest, "state": state, "top": state.top,
        "entry": editor.entry_view(state, options),
        "triggers": _rows("triggers", state.triggers, options), "goals": _rows("goals", state.goals, options),
        "exits": _rows("exits", state.exits, options), "nodes": _rows("nodes", state.nodes, options),
        "blank_rows": [{"section": section, "row": _row_view(section, "__prefix__", editor.blank_row(section), options)}
                       for section in editor.SECTIONS],
        "kind_templates": _kind_templates(options), "node_types": list(editor.TYPE_LABELS.items()),
        "trigger_kinds": list(editor.TRIGGER_LABELS.items()), "reentry_choices": [
            ("not_while_in", "again, but not while already in it"), ("once", "once ever"),
            ("every_time", "every time"), ("once_per_period", "once per period (days below)")],
        "node_ids": node_ids, "migration": _migration_rows(request, journey),
        "error": error, "error_path": getattr(error, "path", ""), "findings": findings, "advanced": advanced,
        "advanced_open": request.POST.get("action") == "save-advanced",
        "cancel_url": reverse("web:journey", args=[journey.pk]) if journey else reverse("web:journeys"),
    })
