"""The journey page's graph: a layered layout of a definition's nodes, drawn as server-side SVG.

Nodes are placed top to bottom by depth (the longest path from the start, so every forward arrow
points down), one row per depth, ordered within a row by the average position of the nodes that
lead to them (fewer crossings). Arrows that go back up or sideways (a loop) are routed around the
right-hand side. Each arrow carries its label (yes/no, a path's share, event/timeout, a switch
case) and how many people went that way; a way out of the journey ends in a small "end" stub.
Nodes unreachable from the start are drawn below the rest with a dashed border.

Plain functions over the parsed definition (`leadflow.journeys.language`) and the per-node figures
(`leadflow.journeys.selectors.NodeStats`); the template `web/journeys/_graph.html` draws the result.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from leadflow.journeys import language as lang

NODE_W, NODE_H = 232, 108
GAP_X, GAP_Y = 40, 72
MARGIN = 24
LOOP_ROOM = 90  # space on the right for arrows that go back up
STUB = 30

CATEGORY = {
    "wait": "wait", "wait_until": "wait", "wait_for_date": "wait", "wait_for_event": "wait",
    "branch": "split", "switch": "split", "random": "split", "holdout": "split",
    "send_email": "send", "webhook": "send", "stream": "send",
    "exit": "exit",
}
TYPE_LABELS = {
    "wait": "Wait", "wait_until": "Wait until", "wait_for_date": "Wait for a date",
    "wait_for_event": "Wait for an event",
    "branch": "Branch", "switch": "Split by value", "random": "Random split", "holdout": "Holdout",
    "send_email": "Send email", "webhook": "Webhook", "update_traits": "Update traits", "tag": "Tags",
    "list": "Static list", "score": "Adjust score", "stage": "Lifecycle stage", "sales_alert": "Sales alert",
    "notify_owner": "Notify owner", "assign_owner": "Assign owner", "enroll": "Enroll in journey",
    "unenroll": "Remove from journey", "exit": "Exit", "stream": "Content stream",
}


@dataclasses.dataclass
class GraphNode:
    id: str
    type: str
    title: str
    summary: str
    category: str
    x: float
    y: float
    figures: list[tuple[str, str, int]]  # (css class, label, value)
    email: list[tuple[str, str]]  # (label, value)
    reachable: bool
    start: bool
    error: str = ""

    @property
    def type_label(self) -> str:
        return TYPE_LABELS.get(self.type, self.type)

    @property
    def lines(self) -> list[tuple[str, str]]:
        """The figures as the box shows them: (css class, text) per line."""
        if not self.figures:
            return []
        values = {key: value for key, _, value in self.figures}
        out = [("figs", f"{values['waiting']} waiting · {values['passed']} passed"),
               ("figs", f"{values['converted']} converted · {values['exited']} exited"
                        + (f" · {values['failed']} failed" if values.get("failed") else ""))]
        if self.email:
            out.append(("mail", " · ".join(f"{value} {label}" for label, value in self.email)))
        return out


@dataclasses.dataclass
class GraphEdge:
    source: str
    target: str | None
    label: str
    path: str
    label_x: float
    label_y: float
    loop: bool = False
    count: int | None = None

    @property
    def text(self) -> str:
        if self.count is None:
            return self.label
        return f"{self.label} · {self.count}" if self.label else str(self.count)


@dataclasses.dataclass
class Graph:
    width: float
    height: float
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    ends: list[tuple[float, float]]  # centres of "end" stubs
    node_w: int = NODE_W
    node_h: int = NODE_H


def _days(value: float) -> str:
    return f"{value:g}d"


def node_summary(node) -> str:
    """One line saying what a node does: "Wait 2d", "Email thanks", "Holdout 10%"."""
    t = node.type
    if t == "wait":
        parts = [f"{node.days:g}d" if node.days else "", f"{node.hours:g}h" if node.hours else "",
                 f"{node.minutes:g}m" if node.minutes else ""]
        return "Wait " + " ".join(p for p in parts if p)
    if t == "wait_until":
        days = ", ".join(d.capitalize() for d in node.weekdays) or "any day"
        return f"Until {node.time} local, {days}"
    if t == "wait_for_date":
        offset = f" {node.offset_days:+d}d" if node.offset_days else ""
        return f"Until {node.date_trait}{offset} {node.time}"
    if t == "wait_for_event":
        return f"For “{node.event}”, up to {_days(node.timeout_days)}"
    if t == "branch":
        return "If the condition holds"
    if t == "switch":
        return f"By {node.field}"
    if t == "random":
        return " / ".join(f"{p.percent:g}%" for p in node.paths)
    if t == "holdout":
        return f"Hold out {node.percent:g}% for {_days(node.days)}"
    if t == "send_email":
        return f"Email {node.template}"
    if t == "webhook":
        return f"To {node.endpoint}"
    if t == "update_traits":
        return "Set " + ", ".join(sorted(node.traits))
    if t == "tag":
        return " ".join([*(f"+{a}" for a in node.add), *(f"−{r}" for r in node.remove)])
    if t == "list":
        return f"Add to {node.add}" if node.add else f"Remove from {node.remove}"
    if t == "score":
        return f"Engagement {node.points:+g}"
    if t == "stage":
        return f"To {node.to}"
    if t == "assign_owner":
        return f"To {node.user}"
    if t in ("enroll", "unenroll"):
        return node.journey
    if t == "exit":
        return node.reason or "Leave the journey"
    if t == "stream":
        return f"{len(node.pools)} pool{'s' if len(node.pools) != 1 else ''}, every {node.cadence.every_days}d"
    return TYPE_LABELS.get(t, t)


def node_exits(node) -> list[tuple[str | None, str, str]]:
    """Where a node sends people: (target or None for the end, arrow label, outcome key the
    figures count that way by)."""
    if isinstance(node, lang.BranchNode):
        return [(node.yes, "yes", "yes"), (node.no, "no", "no")]
    if isinstance(node, lang.SwitchNode):
        out = []
        for i, case in enumerate(node.cases):
            values = ", ".join(str(v) for v in case.equals)
            out.append((case.next, f"= {values[:24]}", f"case {i + 1}"))
        return out + [(node.default, "other", "default")]
    if isinstance(node, lang.RandomNode):
        return [(p.next, f"{p.name + ' ' if p.name else ''}{p.percent:g}%", p.name or f"path {i + 1}")
                for i, p in enumerate(node.paths)]
    if isinstance(node, lang.WaitForEventNode):
        return [(node.next, "event", "event"), (node.timeout_next, "timeout", "timeout")]
    if isinstance(node, lang.WaitForDateNode):
        out = [(node.next, "", "")]
        if node.missing_next is not None:
            out.append((node.missing_next, "no date", ""))
        return out
    if isinstance(node, lang.HoldoutNode):
        return [(node.next, f"treated {100 - node.percent:g}%", "treated")]
    if isinstance(node, lang.ExitNode):
        return []
    return [(node.next, "", "")]


def _depths(definition: lang.Definition) -> tuple[dict[str, int], set[str], set[tuple[str, str]]]:
    """(depth of each node, the nodes reachable from the start, the edges that close a loop)."""
    order = [n.id for n in definition.nodes]
    targets = {n.id: [t for t, _, _ in node_exits(n) if t is not None] for n in definition.nodes}
    back: set[tuple[str, str]] = set()
    seen: set[str] = set()

    def visit(root: str) -> None:
        # Iterative depth-first search; an edge to a node still on the path closes a loop.
        on_path = {root}
        stack = [(root, iter(targets[root]))]
        seen.add(root)
        while stack:
            node_id, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(node_id)
                continue
            if child in on_path:
                back.add((node_id, child))
            elif child not in seen:
                seen.add(child)
                on_path.add(child)
                stack.append((child, iter(targets[child])))

    visit(definition.start_id)
    reachable = set(seen)
    for node_id in order:
        if node_id not in seen:
            visit(node_id)
    forward = {s: [t for t in ts if (s, t) not in back] for s, ts in targets.items()}
    incoming: dict[str, int] = defaultdict(int)
    for s, ts in forward.items():
        for t in ts:
            incoming[t] += 1
    depth = {n: 0 for n in order}
    ready = [n for n in order if incoming[n] == 0]
    while ready:
        node_id = ready.pop(0)
        for t in forward[node_id]:
            depth[t] = max(depth[t], depth[node_id] + 1)
            incoming[t] -= 1
            if incoming[t] == 0:
                ready.append(t)
    if reachable != set(order):
        below = max((depth[n] for n in reachable), default=-1) + 1
        top = min(depth[n] for n in order if n not in reachable)
        for n in order:
            if n not in reachable:
                depth[n] = depth[n] - top + below
    return depth, reachable, back


def _figures(stats) -> tuple[list[tuple[str, str, int]], list[tuple[str, str]]]:
    if stats is None:
        return [], []
    figures = [("waiting", "waiting", stats.waiting), ("passed", "passed", stats.passed),
               ("converted", "converted", stats.converted), ("exited", "exited", stats.exited)]
    if stats.failed:
        figures.append(("failed", "failed", stats.failed))
    email = []
    if stats.email is not None:
        e = stats.email
        email = [("sent", str(e.sent)), ("clicks", str(e.clicked)), ("unsubs", str(e.unsubscribed))]
    return figures, email


def journey_graph(definition: lang.Definition, stats: dict | None = None) -> Graph:
    """The laid-out graph of `definition`, with `stats` ({node id: NodeStats}) on its nodes."""
    stats = stats or {}
    depth, reachable, back = _depths(definition)
    index = {n.id: i for i, n in enumerate(definition.nodes)}
    layers: dict[int, list[str]] = defaultdict(list)
    for n in definition.nodes:
        layers[depth[n.id]].append(n.id)
    # Where each node's arrows come from: (parent, the arrow's place among the parent's ways out,
    # -0.5 leftmost to 0.5 rightmost), so a branch's "yes" child sits left of its "no" child.
    parents: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for n in definition.nodes:
        exits = node_exits(n)
        for i, (t, _, _) in enumerate(exits):
            if t is not None and (n.id, t) not in back:
                parents[t].append((n.id, (i + 1) / (len(exits) + 1) - 0.5))
    position: dict[str, float] = {}
    for level in sorted(layers):
        row = layers[level]
        if level:
            before = {node_id: i for i, node_id in enumerate(row)}

            def weight(node_id: str, before=before) -> tuple[float, int]:
                known = [position[p] + slot for p, slot in parents[node_id] if p in position]
                return (sum(known) / len(known) if known else before[node_id], index[node_id])
            row.sort(key=weight)
        for i, node_id in enumerate(row):
            position[node_id] = i
    widest = max(len(row) for row in layers.values())
    inner = widest * NODE_W + (widest - 1) * GAP_X
    x: dict[str, float] = {}
    y: dict[str, float] = {}
    for level, row in layers.items():
        span = len(row) * NODE_W + (len(row) - 1) * GAP_X
        left = MARGIN + (inner - span) / 2
        for i, node_id in enumerate(row):
            x[node_id] = left + i * (NODE_W + GAP_X)
            y[node_id] = MARGIN + level * (NODE_H + GAP_Y)
    nodes = []
    for n in definition.nodes:
        figures, email = _figures(stats.get(n.id))
        nodes.append(GraphNode(id=n.id, type=n.type, title=n.name or n.id, summary=node_summary(n),
                               category=CATEGORY.get(n.type, "action"), x=x[n.id], y=y[n.id], figures=figures,
                               email=email, reachable=n.id in reachable, start=n.id == definition.start_id))
    edges: list[GraphEdge] = []
    ends: list[tuple[float, float]] = []
    loops = 0
    for n in definition.nodes:
        exits = node_exits(n)
        outcomes = stats[n.id].outcomes if n.id in stats else None
        for i, (target, label, outcome) in enumerate(exits):
            count = outcomes.get(outcome, 0) if outcomes is not None and outcome else None
            sx = x[n.id] + NODE_W * (i + 1) / (len(exits) + 1)
            sy = y[n.id] + NODE_H
            if target is None:
                ey = sy + STUB
                edges.append(GraphEdge(n.id, None, label or "end", f"M{sx:.1f},{sy:.1f} L{sx:.1f},{ey - 6:.1f}",
                                       sx + 6, sy + STUB / 2 + 4, count=count))
                ends.append((sx, ey))
                continue
            tx, ty = x[target] + NODE_W / 2, y[target]
            if (n.id, target) in back or depth[target] <= depth[n.id]:
                loops += 1
                out = 36 + 14 * (loops % 4)
                x1, y1 = x[n.id] + NODE_W, y[n.id] + NODE_H / 2
                x2, y2 = x[target] + NODE_W, y[target] + NODE_H / 2
                right = max(x1, x2) + out
                path = f"M{x1:.1f},{y1:.1f} C{right:.1f},{y1:.1f} {right:.1f},{y2:.1f} {x2 + 4:.1f},{y2:.1f}"
                edges.append(GraphEdge(n.id, target, label, path, right - 4, (y1 + y2) / 2, loop=True, count=count))
                continue
            mid = (ty - sy) / 2
            path = f"M{sx:.1f},{sy:.1f} C{sx:.1f},{sy + mid:.1f} {tx:.1f},{ty - mid:.1f} {tx:.1f},{ty - 4:.1f}"
            # The label sits on the curve's midpoint (a cubic's value at t = 1/2).
            lx, ly = (sx + tx) / 2, (sy + ty) / 2
            edges.append(GraphEdge(n.id, target, label, path, lx + 4, ly, count=count))
    width = MARGIN * 2 + inner + (LOOP_ROOM if loops else 0)
    height = MARGIN * 2 + (max(layers) + 1) * (NODE_H + GAP_Y) - GAP_Y + STUB
    return Graph(width=width, height=height, nodes=nodes, edges=edges, ends=ends)


def trigger_summary(trigger: dict) -> str:
    """A stored trigger in words: "does “Asset Downloaded” (magnet_slug = retirement-guide)"."""
    if "event" in trigger:
        where = ", ".join(f"{c.get('field', '').removeprefix('properties.')} {c.get('op', '')} {c.get('value', '')}"
                          for c in trigger.get("where", []))
        return f"does “{trigger['event']}”" + (f" ({where})" if where else "")
    if "segment_entered" in trigger:
        return f"enters segment {trigger['segment_entered']}"
    if "segment_exited" in trigger:
        return f"leaves segment {trigger['segment_exited']}"
    if "form_submitted" in trigger:
        return f"submits form {trigger['form_submitted']}"
    if "score" in trigger:
        return f"{trigger['score'].replace('_', ' ')} rises to {trigger.get('at_least', 0):g} or more"
    if "grade" in trigger:
        return (f"fit grade becomes {trigger['grade']}" if trigger.get("exactly")
                else f"fit grade reaches {trigger['grade']} or better")
    if "stage_changed" in trigger:
        to = ", ".join(trigger.get("to", [])) or "any stage"
        source = f" from {', '.join(trigger['from'])}" if trigger.get("from") else ""
        return f"moves to {to}{source}"
    if "date_trait" in trigger:
        offset = trigger.get("offset_days", 0)
        when = "on" if not offset else (f"{offset} days after" if offset > 0 else f"{-offset} days before")
        return f"{when} their {trigger['date_trait']}"
    return "is enrolled by hand, the API or another journey"
