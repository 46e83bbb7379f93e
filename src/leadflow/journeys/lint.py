"""The journey linter: what is wrong or risky in a definition, said so a marketer understands it.

`journey_lint` returns findings, each with a level (`error` refuses publishing, `warning` is
shown and allowed), a stable code, the path of the part concerned (`nodes[3]`, `triggers[0]`)
and a message. It runs on publish (`services.journey_publish`), from `leadflow journeys lint` and
`apply`, and in the UI and API.

The graph checks need no database and are plain functions (`graph_lint`, `first_sends`,
`trigger_keys`): nodes nobody can reach, loops without a wait, people trapped with no way to
the end, a grade trigger every grade meets. The workspace checks look up, one query per kind,
everything a definition names: templates (known, approved, with a subscription topic), topics,
sending servers, streams and their content (approved, with a topic), webhook endpoints, static
lists, segments, forms, journeys, users and lifecycle stages; waits for an event nobody has ever
sent or a date trait no contact has; other live journeys that start on the same trigger and may
email the same person the same day; and a live journey nobody entered for 90 days.
docs/journeys-as-code.md lists every code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
from collections import defaultdict, deque

from leadflow.core import clock
from leadflow.journeys import language as lang

ERROR, WARNING = "error", "warning"
STALE_DAYS = 90
SAME_DAY = dt.timedelta(days=1)
# Waits that hold people every time they come round. A wait for a date goes on at once once the
# date has passed, and the treated side of a holdout passes straight through, so neither stops a
# loop from spinning.
HOLDING = frozenset({"wait", "wait_until", "wait_for_event", "stream"})
# LeadFlow's own events: a journey may wait for them before anyone has produced one.
SYSTEM_EVENTS = frozenset({
    "Segment Entered", "Segment Exited", "Lifecycle Stage Changed", "Form Submitted", "Lead Went Quiet",
    "Email Delivered", "Email Opened", "Email Clicked", "Email Bounced", "Email Unsubscribed",
    "Email Marked as Spam",
})


@dataclasses.dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning"
    code: str
    path: str
    message: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _label(node) -> str:
    return f"'{node.id}'" + (f" ({node.name})" if node.name else "")


# --- the graph (no database) ----------------------------------------------------------------------

def edges(definition: lang.Definition) -> dict[str, list[str]]:
    """Node id → the nodes people can go to from it (in order, without repeats)."""
    out: dict[str, list[str]] = {}
    for node in definition.nodes:
        targets = []
        for _, target in lang.node_targets(node):
            if target is not None and target not in targets:
                targets.append(target)
        out[node.id] = targets
    return out


def _ends_here(node) -> bool:
    """Whether people can leave the journey at this node without a goal: an exit, a way to
    "the end", the held-out side of a holdout, or a stream (people stay in one until a goal, an
    exit rule or its `until` takes them out: that is what a stream is for)."""
    if isinstance(node, (lang.ExitNode, lang.HoldoutNode)):
        return True
    if isinstance(node, lang.StreamNode):
        return node.until is None or node.next is None
    for key, target in lang.node_targets(node):
        if target is None and not (isinstance(node, lang.WaitForDateNode) and key == "missing_next"):
            return True  # a missing date with no `missing_next` goes to `next`, not to the end
    return False


def reachable(definition: lang.Definition) -> set[str]:
    graph = edges(definition)
    seen = {definition.start_id}
    stack = [definition.start_id]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _components(nodes: list[str], graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of the graph restricted to `nodes` (Tarjan, iterative)."""
    allowed = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [t for t in graph[node] if t in allowed]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _is_cycle(component: list[str], graph: dict[str, list[str]]) -> bool:
    return len(component) > 1 or component[0] in graph[component[0]]


def _cycle_text(component: list[str], graph: dict[str, list[str]], order: dict[str, int]) -> str:
    """The shortest way round a strongly connected component from its first node: 'a' → 'b' → 'a'."""
    members = set(component)
    first = min(component, key=order.get)
    parents: dict[str, str] = {}
    queue = deque([first])
    while queue:
        node = queue.popleft()
        for target in graph[node]:
            if target == first:
                path = [node]
                while path[-1] != first:
                    path.append(parents[path[-1]])
                return " → ".join(f"'{n}'" for n in [*reversed(path), first])
            if target in members and target not in parents:
                parents[target] = node
                queue.append(target)
    return f"'{first}'"


def graph_lint(definition: lang.Definition) -> list[Finding]:
    """The checks that need only the definition."""
    findings: list[Finding] = []
    graph = edges(definition)
    order = {n.id: i for i, n in enumerate(definition.nodes)}
    nodes = definition.by_id()
    seen = reachable(definition)

    for i, node in enumerate(definition.nodes):
        if node.id not in seen:
            findings.append(Finding(WARNING, "unreachable", f"nodes[{i}]",
                                    f"Nobody can reach {_label(node)}: no step leads to it and it is not the start."))

    live = [n.id for n in definition.nodes if n.id in seen]
    instant = [n for n in live if nodes[n].type not in HOLDING]
    for component in _components(instant, graph):
        if _is_cycle(component, graph):
            first = min(component, key=order.get)
            findings.append(Finding(
                ERROR, "loop_without_wait", f"nodes[{order[first]}]",
                f"People would go round {_cycle_text(component, graph, order)} without ever waiting. Put a "
                "wait on this loop (the engine stops anyone after 100 steps in a row and marks them failed)."))

    can_end = {n for n in live if _ends_here(nodes[n])}
    incoming: dict[str, list[str]] = defaultdict(list)
    for source in live:
        for target in graph[source]:
            incoming[target].append(source)
    stack = list(can_end)
    while stack:
        for source in incoming[stack.pop()]:
            if source not in can_end:
                can_end.add(source)
                stack.append(source)
    trapped = [n for n in live if n not in can_end]
    has_goals = bool(definition.goals or definition.exit_when)
    for component in _components(trapped, graph):
        members = set(component)
        if any(t not in members for n in component for t in graph[n]) or not _is_cycle(component, graph):
            continue  # it leads into a trap reported on its own
        first = min(component, key=order.get)
        if has_goals:
            findings.append(Finding(
                WARNING, "no_exit", f"nodes[{order[first]}]",
                f"People who reach {_label(nodes[first])} go round {_cycle_text(component, graph, order)} for "
                "ever: only a goal or an exit rule takes them out. Add a branch that leaves the loop if "
                "that is not what you want."))
        else:
            findings.append(Finding(
                ERROR, "no_exit", f"nodes[{order[first]}]",
                f"People who reach {_label(nodes[first])} can never leave the journey: "
                f"{_cycle_text(component, graph, order)} has no way out and the journey has no goal or exit "
                "rule. Add a branch that leaves the loop, or a goal."))

    for i, trigger in enumerate(definition.triggers):
        if isinstance(trigger, lang.GradeTrigger) and trigger.grade == lang.GRADES[-1] and not trigger.exactly:
            findings.append(Finding(
                WARNING, "grade_always_met", f"triggers[{i}]",
                f"Every fit grade is {trigger.grade} or better, so this trigger enters people when they are first "
                f"graded, whatever their fit. Use `exactly: true` to enter those whose grade drops to "
                f"{trigger.grade}, or a better grade."))

    goal_events = {g.event: (key, g) for key in ("goals", "exit_when") for g in getattr(definition, key)
                   if g.event and not g.where}
    for i, node in enumerate(definition.nodes):
        if isinstance(node, lang.WaitForEventNode) and node.event in goal_events and node.id in seen:
            key, goal = goal_events[node.event]
            what = "goal" if key == "goals" else "exit rule"
            findings.append(Finding(
                WARNING, "wait_for_goal_event", f"nodes[{i}]",
                f"{_label(node)} waits for '{node.event}', which is also the {what} '{goal.name}': people who "
                f"do it leave the journey at once, so the path after the event is never taken."))
        if isinstance(node, lang.StreamNode) and node.until is None and node.next is not None:
            findings.append(Finding(
                WARNING, "stream_next_unused", f"nodes[{i}].next",
                f"{_label(node)} has a `next` but no `until`: nobody leaves a stream by itself, so "
                f"'{node.next}' is never reached from it. Add `until` (a filter) or remove `next`."))
    return findings


def _hold(node, key: str) -> dt.timedelta:
    """The least time people spend at `node` before leaving it by `key`."""
    if isinstance(node, lang.WaitNode):
        return node.duration
    if isinstance(node, lang.WaitForEventNode) and key == "timeout_next":
        return dt.timedelta(days=node.timeout_days)
    return dt.timedelta(0)  # a window, a date, an event may come at once


def first_sends(definition: lang.Definition) -> dict[str, dt.timedelta]:
    """For each node that emails (send_email, stream), the earliest it can do so after entry."""
    nodes = definition.by_id()
    best: dict[str, dt.timedelta] = {definition.start_id: dt.timedelta(0)}
    queue = [(dt.timedelta(0), definition.start_id)]
    while queue:
        at, node_id = heapq.heappop(queue)
        if at > best.get(node_id, at):
            continue
        node = nodes[node_id]
        for key, target in lang.node_targets(node):
            if target is None:
                continue
            arrive = at + _hold(node, key)
            if arrive < best.get(target, dt.timedelta.max):
                best[target] = arrive
                heapq.heappush(queue, (arrive, target))
    return {node_id: at for node_id, at in best.items()
            if isinstance(nodes[node_id], (lang.SendEmailNode, lang.StreamNode))}


def trigger_keys(definition: lang.Definition) -> dict[tuple, str]:
    """What starts a journey, as comparable keys with a description (manual entry has none)."""
    keys: dict[tuple, str] = {}
    for trigger in definition.triggers:
        if isinstance(trigger, lang.EventTrigger):
            keys[("event", trigger.event)] = f"the event '{trigger.event}'"
        elif isinstance(trigger, lang.FormSubmittedTrigger):
            keys[("form", trigger.form_submitted)] = f"the form '{trigger.form_submitted}'"
        elif isinstance(trigger, lang.SegmentEnteredTrigger):
            keys[("segment_entered", trigger.segment_entered)] = f"entering the segment '{trigger.segment_entered}'"
        elif isinstance(trigger, lang.SegmentExitedTrigger):
            keys[("segment_exited", trigger.segment_exited)] = f"leaving the segment '{trigger.segment_exited}'"
        elif isinstance(trigger, lang.StageTrigger):
            for stage in trigger.to or ["*"]:
                keys[("stage", stage)] = ("a lifecycle stage change" if stage == "*"
                                          else f"the stage changing to '{stage}'")
        elif isinstance(trigger, lang.DateTrigger):
            keys[("date", trigger.date_trait, trigger.offset_days)] = f"the date in '{trigger.date_trait}'"
        elif isinstance(trigger, lang.ScoreTrigger):
            keys[("score", trigger.score, trigger.at_least)] = f"{trigger.score} reaching {trigger.at_least:g}"
        elif isinstance(trigger, lang.GradeTrigger):
            verb = "becoming" if trigger.exactly else "reaching"
            keys[("grade", trigger.grade, trigger.exactly)] = f"the fit grade {verb} {trigger.grade}"
    return keys


def shared_trigger(a: dict[tuple, str], b: dict[tuple, str]) -> str | None:
    """A description of a trigger two journeys share, or None."""
    for key, text in a.items():
        if key in b:
            return text
        if key[0] == "stage" and (("stage", "*") in b or (key[1] == "*" and any(k[0] == "stage" for k in b))):
            return "a lifecycle stage change"
    return None


def _days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    if days < 1:
        return "on the day they enter"
    return f"around day {days:g}" if days == int(days) else f"around day {days:.1f}"


def same_day_sends(mine: lang.Definition, theirs: lang.Definition) -> tuple[str, str, dt.timedelta] | None:
    """(my node, their node, my earliest send) for the first pair of sends less than a day apart."""
    their_sends = sorted(first_sends(theirs).items(), key=lambda kv: kv[1])
    for node_id, at in sorted(first_sends(mine).items(), key=lambda kv: kv[1]):
        for other_id, other_at in their_sends:
            if abs(at - other_at) < SAME_DAY:
                return node_id, other_id, at
    return None


# --- the workspace --------------------------------------------------------------------------------

def _paths(definition: lang.Definition) -> dict[str, str]:
    return {n.id: f"nodes[{i}]" for i, n in enumerate(definition.nodes)}


def _nodes_of(definition: lang.Definition, kind) -> list[tuple[int, object]]:
    return [(i, n) for i, n in enumerate(definition.nodes) if isinstance(n, kind)]


def _templates(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.consent.models import ALL_MARKETING, Topic
    from leadflow.messaging.models import SendingServer, Template
    from leadflow.messaging.outbox import SENDABLE

    findings: list[Finding] = []
    sends = _nodes_of(definition, lang.SendEmailNode)
    streams = _nodes_of(definition, lang.StreamNode)
    templates = {t.slug: t for t in Template.objects.filter(
        workspace_id=workspace_id, slug__in={n.template for _, n in sends}).select_related("approved_version")}
    topics_used: list[tuple[str, str, str]] = []  # (path, topic, whose)
    for i, node in sends:
        path = f"nodes[{i}].template"
        template = templates.get(node.template)
        if template is None:
            findings.append(Finding(ERROR, "unknown_template", path,
                                    f"{_label(node)} sends '{node.template}', but there is no email template "
                                    "with that slug in this workspace."))
            continue
        if template.archived_at is not None:
            findings.append(Finding(ERROR, "template_archived", path,
                                    f"{_label(node)} sends '{node.template}', which is archived."))
            continue
        version = template.approved_version
        if version is None or version.status not in SENDABLE:
            findings.append(Finding(ERROR, "template_not_approved", path,
                                    f"{_label(node)} sends '{node.template}', which has no approved version: "
                                    "nothing could be sent. Get a version approved first."))
        topic = node.topic if node.topic is not None else template.topic
        if node.topic is not None:
            topics_used.append((f"nodes[{i}].topic", node.topic, f"{_label(node)}"))
        elif template.topic:
            topics_used.append((path, template.topic, f"template '{template.slug}'"))
        if template.kind == "marketing" and not (topic or "").strip():
            findings.append(Finding(WARNING, "missing_topic", f"nodes[{i}]",
                                    f"{_label(node)} sends '{node.template}' without a subscription topic: "
                                    "people can only unsubscribe from all marketing email. Set a `topic` on "
                                    "the step or the template."))
    for i, node in [*streams, *_nodes_of(definition, lang.WebhookNode)]:
        if node.topic is not None:
            topics_used.append((f"nodes[{i}].topic", node.topic, f"{_label(node)}"))
    wanted = {t for _, t, _ in topics_used if t.strip() and t != ALL_MARKETING}
    topics = {t.slug: t for t in Topic.objects.filter(workspace_id=workspace_id, slug__in=wanted)}
    for path, slug, whose in topics_used:
        if not slug.strip() or slug == ALL_MARKETING:
            continue
        topic = topics.get(slug)
        if topic is None:
            findings.append(Finding(ERROR, "unknown_topic", path,
                                    f"{whose} uses the topic '{slug}', which does not exist: the consent check "
                                    "would stop every message."))
        elif topic.archived_at is not None:
            findings.append(Finding(ERROR, "topic_archived", path,
                                    f"{whose} uses the topic '{slug}', which is archived: the consent check "
                                    "would stop every message."))
    servers = {n.server for _, n in sends if n.server}
    if servers:
        known = set(SendingServer.objects.filter(workspace_id=workspace_id, name__in=servers)
                    .values_list("name", flat=True))
        for i, node in sends:
            if node.server and node.server not in known:
                findings.append(Finding(ERROR, "unknown_server", f"nodes[{i}].server",
                                        f"{_label(node)} sends through '{node.server}', but there is no sending "
                                        "server with that name."))
    return findings


def _streams(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    """Streams that do not exist or are empty, and stream content that would be skipped or
    could only be unsubscribed from all marketing: items whose template has no approved
    version (or is archived) and marketing items without a topic (the node's, else the
    template's). One query for the streams, one for their items with their templates."""
    from leadflow.journeys.models import Stream, StreamItem
    from leadflow.messaging.outbox import SENDABLE

    streams = _nodes_of(definition, lang.StreamNode)
    slugs = {p.stream for _, n in streams for p in n.pools}
    if not slugs:
        return []
    known = dict(Stream.objects.filter(workspace_id=workspace_id, slug__in=slugs).values_list("slug", "pk"))
    items: dict[str, list] = defaultdict(list)
    for item in (StreamItem.objects.filter(stream_id__in=known.values())
                 .select_related("stream", "template__approved_version").order_by("position", "pk")):
        items[item.stream.slug].append(item)
    findings = []
    for i, node in streams:
        for k, pool in enumerate(node.pools):
            path = f"nodes[{i}].pools[{k}].stream"
            if pool.stream not in known:
                findings.append(Finding(ERROR, "unknown_stream", path,
                                        f"{_label(node)} draws from the stream '{pool.stream}', which does not "
                                        "exist."))
                continue
            if not items[pool.stream]:
                findings.append(Finding(WARNING, "stream_empty", path,
                                        f"The stream '{pool.stream}' has no content yet: people reaching "
                                        f"{_label(node)} get nothing until some is added."))
            for item in items[pool.stream]:
                template = item.template
                what = (f"Item {item.position} of the stream '{pool.stream}' ('{template.slug}'"
                        + (f", for the role '{item.role}'" if item.role else "") + ")")
                version = template.approved_version
                if template.archived_at is not None or version is None or version.status not in SENDABLE:
                    why = "is archived" if template.archived_at is not None else "has no approved version"
                    findings.append(Finding(WARNING, "stream_item_not_approved", path,
                                            f"{what} {why}: {_label(node)} skips it and sends the next piece "
                                            "instead. Get a version approved, or take it out of the stream."))
                elif template.kind == "marketing" and not (node.topic if node.topic is not None
                                                            else template.topic or "").strip():
                    findings.append(Finding(WARNING, "stream_item_missing_topic", path,
                                            f"{what} has no subscription topic, and neither has {_label(node)}: "
                                            "people can only unsubscribe from all marketing email. Set a `topic` "
                                            "on the stream step or the template."))
    return findings


def _endpoints(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.journeys.models import WebhookEndpoint

    hooks = _nodes_of(definition, lang.WebhookNode)
    if not hooks:
        return []
    known = {e.slug: e for e in WebhookEndpoint.objects.filter(workspace_id=workspace_id,
                                                               slug__in={n.endpoint for _, n in hooks})}
    findings = []
    for i, node in hooks:
        endpoint = known.get(node.endpoint)
        if endpoint is None:
            findings.append(Finding(ERROR, "unknown_endpoint", f"nodes[{i}].endpoint",
                                    f"{_label(node)} calls the webhook endpoint '{node.endpoint}', which does "
                                    "not exist."))
        elif endpoint.disabled_at is not None:
            findings.append(Finding(WARNING, "endpoint_disabled", f"nodes[{i}].endpoint",
                                    f"The webhook endpoint '{node.endpoint}' is disabled"
                                    + (f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else "")
                                    + ": nothing will be delivered until it is enabled again."))
    return findings


def _segments(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.segments import language as seglang
    from leadflow.segments.models import Segment
    from leadflow.tracking.models import Form

    wanted: list[tuple[str, str, str]] = []  # (path, slug, what: segment | list)
    for i, trigger in enumerate(definition.triggers):
        if isinstance(trigger, lang.SegmentEnteredTrigger):
            wanted.append((f"triggers[{i}].segment_entered", trigger.segment_entered, "segment"))
        elif isinstance(trigger, lang.SegmentExitedTrigger):
            wanted.append((f"triggers[{i}].segment_exited", trigger.segment_exited, "segment"))
    for path, flt in lang.filters_of(definition):
        for sub, cond in seglang.walk(flt.root):
            if isinstance(cond, seglang.InSegment):
                wanted.append((f"{path}.{sub}.in_segment" if sub else f"{path}.in_segment", cond.in_segment, "segment"))
            elif isinstance(cond, seglang.NotInSegment):
                wanted.append((f"{path}.{sub}.not_in_segment" if sub else f"{path}.not_in_segment",
                               cond.not_in_segment, "segment"))
    for i, node in _nodes_of(definition, lang.ListNode):
        wanted.append((f"nodes[{i}].{'add' if node.add else 'remove'}", node.add or node.remove, "list"))
    findings = []
    if wanted:
        known = {s.slug: s for s in Segment.objects.filter(workspace_id=workspace_id,
                                                           slug__in={slug for _, slug, _ in wanted})}
        for path, slug, what in wanted:
            segment = known.get(slug)
            if segment is None:
                findings.append(Finding(ERROR, f"unknown_{what}", path,
                                        f"There is no {'static list' if what == 'list' else 'segment'} '{slug}' "
                                        "in this workspace."))
            elif what == "list" and segment.kind != "static":
                findings.append(Finding(ERROR, "list_not_static", path,
                                        f"'{slug}' is a dynamic segment: its members follow its filter, so a "
                                        "journey can only add people to or remove them from a static list."))
            elif segment.archived_at is not None:
                findings.append(Finding(WARNING, f"{what}_archived", path, f"The {what} '{slug}' is archived."))
    forms = [(f"triggers[{i}].form_submitted", t.form_submitted) for i, t in enumerate(definition.triggers)
             if isinstance(t, lang.FormSubmittedTrigger)]
    if forms:
        known_forms = set(Form.objects.filter(workspace_id=workspace_id, slug__in={s for _, s in forms})
                          .values_list("slug", flat=True))
        findings += [Finding(ERROR, "unknown_form", path, f"There is no form '{slug}' in this workspace: "
                             "nobody will enter this way.") for path, slug in forms if slug not in known_forms]
    return findings


def _journeys(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.journeys.models import Journey, JourneyStatus

    steps = _nodes_of(definition, (lang.EnrollNode, lang.UnenrollNode))
    if not steps:
        return []
    status = dict(Journey.objects.filter(workspace_id=workspace_id, slug__in={n.journey for _, n in steps})
                  .values_list("slug", "status"))
    findings = []
    for i, node in steps:
        if node.journey == definition.slug:
            continue
        if node.journey not in status:
            findings.append(Finding(ERROR, "unknown_journey", f"nodes[{i}].journey",
                                    f"{_label(node)} names the journey '{node.journey}', which does not exist."))
        elif isinstance(node, lang.EnrollNode) and status[node.journey] != JourneyStatus.LIVE:
            findings.append(Finding(WARNING, "journey_not_live", f"nodes[{i}].journey",
                                    f"{_label(node)} enrolls people into '{node.journey}', which is "
                                    f"{status[node.journey]}: the step fails for everyone until it is live."))
    return findings


def _users(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from django.contrib.auth import get_user_model
    from django.db.models import Q

    refs = [(f"nodes[{i}].user", n.user) for i, n in _nodes_of(definition, (lang.AssignOwnerNode,
                                                                            lang.NotifyOwnerNode)) if n.user]
    if not refs:
        return []
    names = {r for _, r in refs if not r.isdigit()}
    ids = {int(r) for _, r in refs if r.isdigit()}
    members = get_user_model().objects.filter(Q(username__in=names) | Q(pk__in=ids),
                                              memberships__workspace_id=workspace_id)
    known = set()
    for pk, username in members.values_list("pk", "username"):
        known |= {str(pk), username}
    return [Finding(ERROR, "unknown_user", path, f"'{ref}' is not a member of this workspace.")
            for path, ref in refs if ref not in known]


def _stages(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.lifecycle.services import lifecycle_settings_get
    from leadflow.segments import language as seglang

    named: list[tuple[str, str]] = []
    for i, trigger in enumerate(definition.triggers):
        if isinstance(trigger, lang.StageTrigger):
            named += [(f"triggers[{i}].to", s) for s in trigger.to]
            named += [(f"triggers[{i}].from", s) for s in trigger.from_]
    for i, node in enumerate(definition.nodes):
        if isinstance(node, lang.StageNode):
            named.append((f"nodes[{i}].to", node.to))
        elif isinstance(node, lang.StreamNode):
            named += [(f"nodes[{i}].pools[{k}].stages", s) for k, p in enumerate(node.pools) for s in p.stages]
    for path, flt in lang.filters_of(definition):
        for sub, cond in seglang.walk(flt.root):
            if isinstance(cond, seglang.FieldCondition) and cond.field == "lifecycle_stage":
                values = cond.value if isinstance(cond.value, list) else [cond.value]
                named += [(f"{path}.{sub}" if sub else path, v) for v in values if isinstance(v, str) and v]
    if not named:
        return []
    known = [s["key"] for s in lifecycle_settings_get(workspace_id=workspace_id).stages]
    return [Finding(ERROR, "unknown_stage", path, f"There is no lifecycle stage '{stage}' in this workspace; "
                    f"the stages are {', '.join(known)}.") for path, stage in named if stage not in known]


def _waits(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    from leadflow.contacts.models import Contact
    from leadflow.tracking.models import Event

    findings = []
    seen = reachable(definition)
    events = [(i, n) for i, n in _nodes_of(definition, lang.WaitForEventNode)
              if n.id in seen and n.event not in SYSTEM_EVENTS]
    for name in sorted({n.event for _, n in events}):
        if Event.objects.filter(workspace_id=workspace_id, event=name).exists():
            continue
        for i, node in events:
            if node.event == name:
                findings.append(Finding(WARNING, "event_never_seen", f"nodes[{i}].event",
                                        f"{_label(node)} waits for '{name}', but nobody in this workspace has "
                                        f"ever done it: everyone will wait {node.timeout_days:g} days and take "
                                        "the timeout path. Check the event's exact name."))
    dates: list[tuple[str, str, str]] = []
    for i, node in _nodes_of(definition, lang.WaitForDateNode):
        if node.id in seen:
            dates.append((f"nodes[{i}].date_trait", node.date_trait,
                          f"everyone goes straight on at {_label(node)}"))
    for i, trigger in enumerate(definition.triggers):
        if isinstance(trigger, lang.DateTrigger):
            dates.append((f"triggers[{i}].date_trait", trigger.date_trait, "nobody enters by this date"))
    set_here = {name for _, n in _nodes_of(definition, lang.UpdateTraitsNode) for name in n.traits}
    for trait in sorted({t for _, t, _ in dates} - set_here):
        if Contact.objects.filter(workspace_id=workspace_id, traits__has_key=trait).exists():
            continue
        findings += [Finding(WARNING, "date_trait_never_seen", path,
                             f"No contact has a '{trait}' trait, so {outcome}. Check the trait's exact name.")
                     for path, name, outcome in dates if name == trait]
    return findings


def _sales_reps(workspace_id: int, definition: lang.Definition) -> list[Finding]:
    """A sales alert step in a workspace where routing has nobody to give a lead to."""
    from leadflow.journeys.actions import sales_reps_missing

    alerts = _nodes_of(definition, lang.SalesAlertNode)
    if not alerts:
        return []
    gap = sales_reps_missing(workspace_id=workspace_id, now=clock.now())
    if gap is None:
        return []
    return [Finding(WARNING, "no_sales_rep", f"nodes[{i}]",
                    f"{_label(node)} hands people to sales, but routing has nobody to give them to "
                    f"({gap.removeprefix('no sales rep to route to: ')}): they will wait at this step until a "
                    "rep can take them. Add an available sales rep to the default pool or a routing rule "
                    "(Sales → Lifecycle and routing).")
            for i, node in alerts]


def _conflicts(workspace_id: int, definition: lang.Definition, journey) -> list[Finding]:
    from leadflow.journeys.engine import version_definition
    from leadflow.journeys.models import Journey, JourneyStatus

    mine = trigger_keys(definition)
    if not mine or not first_sends(definition):
        return []
    others = Journey.objects.filter(workspace_id=workspace_id, status=JourneyStatus.LIVE,
                                    version__isnull=False).select_related("version").order_by("pk")
    if journey is not None and journey.pk:
        others = others.exclude(pk=journey.pk)
    elif definition.slug:
        others = others.exclude(slug=definition.slug)
    paths = _paths(definition)
    findings = []
    for other in others:
        theirs = version_definition(other.version)
        shared = shared_trigger(mine, trigger_keys(theirs))
        if shared is None:
            continue
        clash = same_day_sends(definition, theirs)
        if clash is None:
            continue
        node_id, other_node, at = clash
        findings.append(Finding(
            WARNING, "same_day_conflict", paths[node_id],
            f"The live journey '{other.name}' ({other.slug}) also starts on {shared} and may email the same "
            f"person on the same day: '{node_id}' here and '{other_node}' there both send {_days(at)}. Stagger "
            "them, or give one an entry filter that excludes the other's people."))
    return findings


def _stale(journey) -> list[Finding]:
    from leadflow.journeys.models import JourneyStatus

    if journey is None or journey.status != JourneyStatus.LIVE:
        return []
    now = clock.now()
    since = journey.last_entry_at
    if since is None:
        published = journey.version.published_at if journey.version_id and journey.version else None
        since = published or journey.created_at
    if since is None or now - since < dt.timedelta(days=STALE_DAYS):
        return []
    what = "entered it" if journey.last_entry_at else "has entered it since it went live"
    return [Finding(WARNING, "stale", "", f"Nobody {what} for {(now - since).days} days. Check its triggers "
                    "and entry filter, or archive it.")]


def journey_lint(*, workspace_id: int, definition, journey=None) -> list[Finding]:
    """Everything wrong or risky in `definition` (a Definition or its JSON) for `workspace_id`,
    errors first, then warnings, each in the order of the definition. `journey` is the journey
    it belongs to, when it exists (for the staleness check and to leave it out of conflicts)."""
    if not isinstance(definition, lang.Definition):
        try:
            definition = lang.journey_parse(definition)
        except lang.JourneyError as exc:
            return [Finding(ERROR, "invalid", exc.path, exc.reason)]
    findings = graph_lint(definition)
    for check in (_templates, _streams, _endpoints, _segments, _journeys, _users, _stages, _waits, _sales_reps):
        findings += check(workspace_id, definition)
    findings += _conflicts(workspace_id, definition, journey)
    findings += _stale(journey)
    rank = {ERROR: 0, WARNING: 1}
    return sorted(findings, key=lambda f: rank[f.level])


def findings_text(findings: list[Finding]) -> str:
    """Findings one per line, as the command line prints them."""
    return "\n".join(f"{f.level}: {f.path + ': ' if f.path else ''}{f.message} [{f.code}]" for f in findings)
