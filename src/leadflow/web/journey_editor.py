"""The form-based journey editor: a definition shown as rows of form fields — one row per trigger,
goal, exit rule and node, each node type with its own fields — and the posted rows read back into
a definition.

The common cases need no JSON: an event name and "property = value" lines, a segment picked from a
menu, "value, value -> node" lines for a switch, "50 -> node" lines for a random split. A part the
rows cannot show (a filter with groups, a stream's pools) stays in a small JSON/YAML box of its
own, so opening a journey and saving it never loses anything.

`EditorState` holds what the page shows as raw strings (from a stored definition or from a post,
so a post with a mistake comes back exactly as typed); `state_definition` turns it into the
definition dict `journeys.language` validates, raising `JourneyError` with the path of the bad
part (``nodes[2].days``) for what the rows themselves cannot read. Plain functions: no database.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import orjson
import yaml

from leadflow.journeys.yamlio import yaml_load
from leadflow.journeys import language as lang
from leadflow.journeys.language import JourneyError

# --- what the rows hold ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Param:
    """One field of a row: `key` in the definition, how it is typed (`kind`) and labelled."""

    key: str
    label: str
    kind: str = "text"
    placeholder: str = ""
    help: str = ""
    modes: tuple[str, ...] = ()  # for filters: the ways a condition may be given
    choices: tuple[tuple[str, str], ...] = ()  # a fixed menu (value, label), when the page offers none


NEXT = Param("next", "Then go to", "node", help="empty: the journey ends here")
CONDITION_MODES = ("segment", "field", "performed", "json")
OPTIONAL_MODES = ("", *CONDITION_MODES)
GOAL_MODES = ("event", *CONDITION_MODES)
MODE_LABELS = {"": "everyone", "segment": "in a segment", "field": "a field or trait", "performed": "did an event",
               "json": "advanced (JSON)", "event": "does an event"}
FIELD_OPS = ("eq", "neq", "contains", "not_contains", "starts_with", "in", "not_in", "gt", "gte", "lt", "lte",
             "exists", "not_exists", "more_than_days_ago", "less_than_days_ago", "before", "after")
OP_LABELS = {"eq": "is", "neq": "is not", "contains": "contains", "not_contains": "does not contain",
             "starts_with": "starts with", "in": "is one of", "not_in": "is none of", "gt": ">", "gte": "≥",
             "lt": "<", "lte": "≤", "exists": "is set", "not_exists": "is not set",
             "more_than_days_ago": "more than N days ago", "less_than_days_ago": "less than N days ago",
             "before": "before", "after": "after"}
NO_VALUE_OPS = ("exists", "not_exists")
LIST_OPS = ("in", "not_in")
FILTER_PARTS = ("mode", "segment", "field", "op", "value", "event", "days", "json")

NODE_PARAMS: dict[str, list[Param]] = {
    "wait": [Param("days", "Days", "number"), Param("hours", "Hours", "number"),
             Param("minutes", "Minutes", "number"), NEXT],
    "wait_until": [Param("time", "Local time", "time", placeholder="10:00"),
                   Param("weekdays", "On", "weekdays", help="none ticked: the next day at that time"), NEXT],
    "wait_for_date": [Param("date_trait", "Date trait", placeholder="renewal_date"),
                      Param("offset_days", "Days after it (negative: before)", "int"),
                      Param("time", "Local time", "time", placeholder="09:00"), NEXT,
                      Param("missing_next", "If the date is missing", "node")],
    "wait_for_event": [Param("event", "Event", placeholder="Webinar Attended"),
                       Param("where", "Only when (property = value, one a line)", "where"),
                       Param("timeout_days", "Give up after (days)", "number"),
                       Param("next", "If it happens, go to", "node"),
                       Param("timeout_next", "If not, go to", "node")],
    "branch": [Param("if", "If the person is", "filter", modes=CONDITION_MODES),
               Param("yes", "Yes: go to", "node"), Param("no", "No: go to", "node")],
    "switch": [Param("field", "Split by field", placeholder="traits.role"),
               Param("cases", "Cases (values -> node, one a line)", "cases", placeholder="buyer, owner -> buyer-mail"),
               Param("default", "Anyone else: go to", "node")],
    "random": [Param("paths", "Paths (percent -> node name, one a line)", "paths", placeholder="50 -> mail-a A")],
    "holdout": [Param("percent", "Hold out (%)", "number"), Param("days", "Observe them for (days)", "number"),
                Param("next", "Everyone else goes to", "node")],
    "send_email": [Param("template", "Template", "template"), Param("topic", "Subscription topic"),
                   Param("server", "Sending server", "server", help="empty: the workspace default"), NEXT],
    "webhook": [Param("endpoint", "Endpoint (slug)"), Param("event_type", "Event type", placeholder="journey.step"),
                Param("data", "Data (key = value, one a line)", "kv"),
                Param("topic", "Subscription topic", help="for a step that reaches the person (SMS, ads, mail): "
                                                          "people the topic's consent stops are skipped"), NEXT],
    "update_traits": [Param("traits", "Set traits (key = value, one a line)", "kv"), NEXT],
    "tag": [Param("add", "Add tags", "csv"), Param("remove", "Remove tags", "csv"), NEXT],
    "list": [Param("add", "Add to list", "list"), Param("remove", "Remove from list", "list"), NEXT],
    "score": [Param("points", "Engagement points (negative lowers)", "number"), NEXT],
    "stage": [Param("to", "Move to stage", "stage"), NEXT],
    "sales_alert": [Param("note", "Note for the rep"), NEXT],
    "notify_owner": [Param("note", "Note"), Param("task", "Create a sales task"),
                     Param("due_days", "Task due in (days)", "number", help="empty: no due date"),
                     Param("user", "Notify this user instead (username or id)"), NEXT],
    "assign_owner": [Param("user", "Owner (username or id)"), NEXT],
    "enroll": [Param("journey", "Journey", "journey"), NEXT],
    "unenroll": [Param("journey", "Journey", "journey"), NEXT],
    "exit": [Param("reason", "Reason")],
    "stream": [Param("pools", "Pools (JSON)", "json", placeholder='[{"stream": "early", "stages": ["lead"]}]'),
               Param("cadence", "Cadence (JSON)", "json", placeholder='{"every_days": 14, "weekday": "tue"}'),
               Param("slow", "Slow down (JSON)", "json"), Param("role_trait", "Role trait", placeholder="role"),
               Param("topic", "Subscription topic"), Param("until", "Until the person is", "filter",
                                                            modes=OPTIONAL_MODES), NEXT],
}
assert set(NODE_PARAMS) == set(lang.NODE_TYPES)

TRIGGER_PARAMS: dict[str, list[Param]] = {
    "event": [Param("event", "Event name", placeholder="Asset Downloaded"),
              Param("where", "Only when (property = value, one a line)", "where",
                    placeholder="magnet_slug = retirement-guide")],
    "segment_entered": [Param("segment_entered", "Segment", "segment")],
    "segment_exited": [Param("segment_exited", "Segment", "segment")],
    "form_submitted": [Param("form_submitted", "Form", "form")],
    "score": [Param("score", "Score", "score"), Param("at_least", "Rises to at least", "number")],
    # One menu for both keys: "B" is {grade: B} (B or better), "=B" is {grade: B, exactly: true}.
    "grade": [Param("grade", "Fit grade becomes", "grade", choices=tuple(
        [(g, g if i == 0 else f"{g} or better") for i, g in enumerate(lang.GRADES)]
        + [(f"={g}", f"exactly {g}") for g in lang.GRADES]))],
    "stage_changed": [Param("to", "To stages (comma-separated; empty: any)", "csv"),
                      Param("from", "From stages (comma-separated; empty: any)", "csv")],
    "date_trait": [Param("date_trait", "Date trait", placeholder="renewal_date"),
                   Param("offset_days", "Days after it (negative: before)", "int")],
    "manual": [],
}
assert set(TRIGGER_PARAMS) == set(lang.TRIGGER_KINDS)
TRIGGER_LABELS = {"event": "does an event", "segment_entered": "enters a segment", "segment_exited": "leaves a segment",
                  "form_submitted": "submits a form", "score": "a score crosses a threshold",
                  "grade": "the fit grade reaches a grade",
                  "stage_changed": "changes lifecycle stage", "date_trait": "a date comes (N days before/after)",
                  "manual": "only by hand or the API"}
# The journey's "who may enter" condition: one filter field whose parts are posted as `entry-mode`,
# `entry-segment`, … (`state_from_post` reads them back under the same name).
ENTRY = Param("entry", "Who may enter", "filter", modes=OPTIONAL_MODES)
GOAL_PARAMS = [Param("name", "Name", placeholder="Became MQL"),
               Param("when", "When the person", "filter", modes=GOAL_MODES),
               Param("where", "Event only when (property = value, one a line)", "where")]
TYPE_LABELS = {
    "wait": "Wait", "wait_until": "Wait until a day and time", "wait_for_date": "Wait for a date",
    "wait_for_event": "Wait for an event", "branch": "Branch (yes/no)", "switch": "Split by a value",
    "random": "Random split (A/B)", "holdout": "Holdout (control group)", "send_email": "Send email",
    "webhook": "Send a webhook", "update_traits": "Update traits", "tag": "Add/remove tags",
    "list": "Add to/remove from a list", "score": "Adjust score", "stage": "Change lifecycle stage",
    "sales_alert": "Alert sales", "notify_owner": "Notify owner / task", "assign_owner": "Assign owner",
    "enroll": "Enroll in another journey", "unenroll": "Remove from another journey", "exit": "Exit",
    "stream": "Stay-in-touch stream",
}
WEEKDAY_LABELS = [("mon", "Mon"), ("tue", "Tue"), ("wed", "Wed"), ("thu", "Thu"), ("fri", "Fri"), ("sat", "Sat"),
                  ("sun", "Sun")]
SCORES = ("engagement_score", "fit_score", "conversion_probability")


@dataclasses.dataclass
class Row:
    """One row of the editor: its kind (node type, trigger kind; "goal" for goals and exit rules)
    and its raw values by key (strings; a list for weekdays; a dict of parts for a filter)."""

    kind: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str = ""


@dataclasses.dataclass
class EditorState:
    top: dict[str, Any]
    triggers: list[Row]
    goals: list[Row]
    exits: list[Row]
    nodes: list[Row]


SECTIONS = {"triggers": "triggers", "goals": "goals", "exits": "exit_when", "nodes": "nodes"}


def params_of(section: str, kind: str) -> list[Param]:
    if section == "nodes":
        return NODE_PARAMS.get(kind, [])
    if section == "triggers":
        return TRIGGER_PARAMS.get(kind, [])
    return GOAL_PARAMS


# --- text helpers -------------------------------------------------------------------------------

def text_load(raw: str, *, path: str = "") -> Any:
    """JSON or YAML text as data (JSON first; YAML reads JSON too but more slowly)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return yaml_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise JourneyError(f"neither JSON nor YAML{where}: {problem}", path=path) from None


def yaml_text(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def _scalar(raw: str) -> Any:
    """A typed value: JSON numbers, true/false and quoted strings as such, anything else as text."""
    raw = raw.strip()
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    return value if isinstance(value, (str, int, float, bool)) else raw


def _num_text(value: int | float) -> str:
    """2.0 → "2", 0.25 → "0.25", 1234567.0 → "1234567" (never the rounding of `:g`)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _scalar_text(value: Any) -> str | None:
    """The text `_scalar` reads back as `value`, or None when there is none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _num_text(value)
    if isinstance(value, str):
        if value != value.strip() or "\n" in value:
            return None
        return value if _scalar(value) == value and type(_scalar(value)) is str else orjson.dumps(value).decode()
    return None


def _json_text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


# --- definition → rows ----------------------------------------------------------------------------

def _filter_parts(flt: Any, modes: tuple[str, ...]) -> dict[str, str]:
    parts = {k: "" for k in FILTER_PARTS}
    if flt is None:
        parts["mode"] = modes[0]
        return parts
    body = {k: v for k, v in flt.items() if k != "version"} if isinstance(flt, dict) else flt
    if isinstance(body, dict):
        keys = set(body)
        if keys == {"in_segment"} and isinstance(body["in_segment"], str) and "segment" in modes:
            return {**parts, "mode": "segment", "segment": body["in_segment"]}
        if keys <= {"performed", "within_days"} and "performed" in keys and "performed" in modes:
            days = body.get("within_days")
            return {**parts, "mode": "performed", "event": body["performed"],
                    "days": "" if days is None else str(days)}
        if keys <= {"field", "op", "value"} and {"field", "op"} <= keys and body["op"] in FIELD_OPS:
            value = body.get("value")
            if body["op"] in NO_VALUE_OPS and "value" not in keys:
                text = ""
            elif body["op"] in LIST_OPS and isinstance(value, list):
                items = [_scalar_text(v) for v in value]
                text = None if any(t is None or "," in t for t in items) else ", ".join(items)
            else:
                text = _scalar_text(value)
            if text is not None and "field" in modes:
                return {**parts, "mode": "field", "field": body["field"], "op": body["op"], "value": text}
    return {**parts, "mode": "json", "json": _json_text(flt)}


def _where_text(conditions: list) -> str:
    lines = []
    for c in conditions or []:
        field = c.get("field", "") if isinstance(c, dict) else ""
        text = _scalar_text(c.get("value")) if isinstance(c, dict) else None
        if (set(c) != {"field", "op", "value"} or c["op"] != "eq" or not field.startswith("properties.")
                or text is None or "=" in field):
            return _json_text(conditions)
        lines.append(f"{field.removeprefix('properties.')} = {text}")
    return "\n".join(lines)


def _kv_text(data: dict) -> str:
    lines = []
    for key, value in (data or {}).items():
        text = _scalar_text(value) if not isinstance(value, str) or value.strip() else None
        if text is None or "=" in key or not key.strip() or key != key.strip():
            return _json_text(data)
        lines.append(f"{key} = {text}")
    return "\n".join(lines)


def _cases_text(cases: list) -> str:
    lines = []
    for case in cases or []:
        values = [_scalar_text(v) for v in case.get("equals", [])]
        if any(v is None or "," in v or "->" in v for v in values) or set(case) - {"equals", "next"}:
            return _json_text(cases)
        lines.append(f"{', '.join(values)} -> {case.get('next') or 'end'}")
    return "\n".join(lines)


def _paths_text(paths: list) -> str:
    lines = []
    for path in paths or []:
        name = path.get("name", "")
        if name != name.strip() or "\n" in name or set(path) - {"percent", "next", "name"}:
            return _json_text(paths)
        lines.append(f"{path['percent']:g} -> {path.get('next') or 'end'}{' ' + name if name else ''}")
    return "\n".join(lines)


def _value_text(param: Param, value: Any) -> Any:
    if param.kind == "filter":
        return _filter_parts(value, param.modes)
    if value is None:
        return [] if param.kind == "weekdays" else ""
    if param.kind in ("number", "int"):
        return _num_text(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    if param.kind == "weekdays":
        return list(value)
    if param.kind == "csv":
        return ", ".join(value)
    if param.kind == "where":
        return _where_text(value)
    if param.kind == "kv":
        return _kv_text(value)
    if param.kind == "cases":
        return _cases_text(value)
    if param.kind == "paths":
        return _paths_text(value)
    if param.kind == "json":
        return _json_text(value)
    return str(value)


def _node_row(node: dict) -> Row:
    kind = node.get("type", "wait")
    values = {"id": node.get("id", ""), "name": node.get("name", "")}
    for param in NODE_PARAMS.get(kind, []):
        values[param.key] = _value_text(param, node.get(param.key))
    return Row(kind, values)


def trigger_kind(trigger: dict) -> str:
    for kind in lang.TRIGGER_KINDS:
        if kind in trigger:
            return kind
    return "event"


def _trigger_row(trigger: dict) -> Row:
    kind = trigger_kind(trigger)
    values = {p.key: _value_text(p, trigger.get(p.key)) for p in TRIGGER_PARAMS[kind]}
    if kind == "grade" and trigger.get("exactly"):
        values["grade"] = f"={values['grade']}"
    return Row(kind, values)


def _goal_row(goal: dict) -> Row:
    values = {"name": goal.get("name", ""), "where": _where_text(goal.get("where", []))}
    if goal.get("event") is not None:
        values["when"] = {**{k: "" for k in FILTER_PARTS}, "mode": "event", "event": goal["event"]}
    else:
        values["when"] = _filter_parts(goal.get("filter"), GOAL_MODES)
    return Row("goal", values)


def state_from_definition(data: dict) -> EditorState:
    """The editor's rows for a stored (canonical) definition."""
    cap = data.get("cap") or {}
    top = {"name": data.get("name", ""), "description": data.get("description", ""),
           "reentry": data.get("reentry", "not_while_in"), "reentry_days": str(data.get("reentry_days") or ""),
           "cap_emails": str(cap.get("emails", "")),
           "cap_days": _value_text(Param("days", "", "number"), cap.get("days")),
           "start": data.get("start") or "", "entry": _filter_parts(data.get("entry"), OPTIONAL_MODES)}
    return EditorState(top=top, triggers=[_trigger_row(t) for t in data.get("triggers", [])],
                       goals=[_goal_row(g) for g in data.get("goals", [])],
                       exits=[_goal_row(g) for g in data.get("exit_when", [])],
                       nodes=[_node_row(n) for n in data.get("nodes", [])])


def blank_state() -> EditorState:
    """A new journey: one event trigger and one node to start from."""
    return EditorState(top={"name": "", "description": "", "reentry": "not_while_in", "reentry_days": "",
                            "cap_emails": "", "cap_days": "", "start": "",
                            "entry": _filter_parts(None, OPTIONAL_MODES)},
                       triggers=[blank_row("triggers")], goals=[], exits=[], nodes=[blank_row("nodes")])


def blank_row(section: str, kind: str | None = None) -> Row:
    kind = kind or {"nodes": "wait", "triggers": "event"}.get(section, "goal")
    values: dict[str, Any] = {"id": "", "name": ""} if section == "nodes" else {}
    for param in params_of(section, kind):
        values[param.key] = _value_text(param, None)
    return Row(kind, values)


# --- a post → rows --------------------------------------------------------------------------------

def _posted(post, name: str, param: Param) -> Any:
    if param.kind == "filter":
        parts = {part: post.get(f"{name}-{part}", "") for part in FILTER_PARTS}
        if parts["mode"] not in param.modes:
            parts["mode"] = param.modes[0]
        return parts
    if param.kind == "weekdays":
        return [d for d in post.getlist(name) if d in lang.WEEKDAYS]
    return post.get(name, "")


def _total(post, section: str) -> int:
    raw = post.get(f"{section}-TOTAL", "0")
    return min(int(raw), lang.MAX_NODES + 50) if raw.isdigit() else 0


def state_from_post(post) -> EditorState:
    """The rows as posted (rows marked for removal left out), ready to show again or to read."""
    top = {key: post.get(key, "") for key in ("name", "description", "reentry", "reentry_days", "cap_emails",
                                             "cap_days", "start")}
    top["entry"] = _posted(post, ENTRY.key, ENTRY)
    sections: dict[str, list[Row]] = {}
    for section in SECTIONS:
        rows = []
        for i in range(_total(post, section)):
            prefix = f"{section}-{i}"
            if post.get(f"{prefix}-DELETE"):
                continue
            kind = post.get(f"{prefix}-kind", "")
            if section == "nodes" and kind not in NODE_PARAMS:
                kind = "wait"
            elif section == "triggers" and kind not in TRIGGER_PARAMS:
                kind = "event"
            elif section in ("goals", "exits"):
                kind = "goal"
            values = {key: post.get(f"{prefix}-{key}", "") for key in ("id", "name")} if section == "nodes" else {}
            for param in params_of(section, kind):
                values[param.key] = _posted(post, f"{prefix}-{param.key}", param)
            rows.append(Row(kind, values))
        sections[section] = rows
    return EditorState(top=top, **sections)


# --- rows → definition ----------------------------------------------------------------------------

def _number(raw: str, path: str, *, integer: bool = False) -> int | float:
    text = raw.strip()
    try:
        if integer or re.fullmatch(r"[-+]?\d+", text):
            return int(text)
        value = float(text.replace(",", "."))
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    except ValueError:
        raise JourneyError(f"{text!r} is not a {'whole ' if integer else ''}number", path=path) from None


def _filter_value(parts: dict, path: str) -> dict | None:
    mode = parts.get("mode", "")
    if mode == "":
        return None
    if mode == "segment":
        if not parts.get("segment", "").strip():
            raise JourneyError("choose a segment", path=path)
        return {"in_segment": parts["segment"].strip()}
    if mode == "performed":
        event = parts.get("event", "").strip()
        if not event:
            raise JourneyError("name the event", path=path)
        out: dict[str, Any] = {"performed": event}
        if parts.get("days", "").strip():
            out["within_days"] = _number(parts["days"], f"{path}.within_days", integer=True)
        return out
    if mode == "field":
        field, op = parts.get("field", "").strip(), parts.get("op", "") or "eq"
        if not field:
            raise JourneyError("name the field (a profile field or traits.NAME)", path=path)
        out = {"field": field, "op": op}
        raw = parts.get("value", "")
        if op in LIST_OPS:
            out["value"] = [_scalar(v) for v in raw.split(",") if v.strip()]
        elif op not in NO_VALUE_OPS:
            out["value"] = _scalar(raw)
        return out
    if mode == "json":
        raw = parts.get("json", "").strip()
        if not raw:
            raise JourneyError("write the filter (JSON or YAML)", path=path)
        return text_load(raw, path=path)
    raise JourneyError(f"unknown kind of condition {mode!r}", path=path)


def _where_value(raw: str, path: str) -> list:
    text = raw.strip()
    if not text:
        return []
    if text.startswith("["):
        value = text_load(text, path=path)
        if not isinstance(value, list):
            raise JourneyError("a list of property conditions", path=path)
        return value
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            raise JourneyError(f"line {number}: write property = value, such as plan = pro", path=path)
        name = name.strip()
        out.append({"field": name if name.startswith("properties.") else f"properties.{name}", "op": "eq",
                    "value": _scalar(value)})
    return out


def _kv_value(raw: str, path: str) -> dict:
    text = raw.strip()
    if not text:
        return {}
    if text.startswith("{"):
        value = text_load(text, path=path)
        if not isinstance(value, dict):
            raise JourneyError("an object of keys and values", path=path)
        return value
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise JourneyError(f"line {number}: write key = value, such as plan = pro", path=path)
        out[key.strip()] = _scalar(value)
    return out


_TARGET = r"(?:end|[a-z0-9][a-z0-9_\-]{0,63})?"


def _cases_value(raw: str, path: str) -> list:
    text = raw.strip()
    if text.startswith("["):
        value = text_load(text, path=path)
        if not isinstance(value, list):
            raise JourneyError("a list of cases", path=path)
        return value
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(rf"\s*(.+?)\s*->\s*({_TARGET})\s*", line)
        if not match:
            raise JourneyError(f"line {number}: write values -> node, such as buyer, owner -> buyer-mail", path=path)
        case: dict[str, Any] = {"equals": [_scalar(v) for v in match.group(1).split(",") if v.strip()]}
        if match.group(2) and match.group(2) != "end":
            case["next"] = match.group(2)
        out.append(case)
    return out


def _paths_value(raw: str, path: str) -> list:
    text = raw.strip()
    if text.startswith("["):
        value = text_load(text, path=path)
        if not isinstance(value, list):
            raise JourneyError("a list of paths", path=path)
        return value
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(rf"\s*([0-9.,]+)\s*%?\s*->\s*({_TARGET})(?:\s+(.*?))?\s*", line)
        if not match:
            raise JourneyError(f"line {number}: write percent -> node, such as 50 -> mail-a", path=path)
        item: dict[str, Any] = {"percent": _number(match.group(1), f"{path}[{len(out)}].percent")}
        if match.group(2) and match.group(2) != "end":
            item["next"] = match.group(2)
        if match.group(3):
            item["name"] = match.group(3)
        out.append(item)
    return out


def _value(param: Param, raw: Any, path: str) -> Any:
    """The definition value of one field, or None to leave it out."""
    kind = param.kind
    if kind == "filter":
        return _filter_value(raw, path)
    if kind == "weekdays":
        return list(raw) or None
    raw = raw if isinstance(raw, str) else ""
    if kind == "node":
        return None if raw.strip() in ("", "end") else raw.strip()
    if kind in ("text", "time", "template", "server", "stage", "journey", "list", "segment", "form", "score",
                "grade"):
        return raw.strip() or None
    if not raw.strip():
        return None
    if kind == "number":
        return _number(raw, path)
    if kind == "int":
        return _number(raw, path, integer=True)
    if kind == "csv":
        return [v.strip() for v in raw.split(",") if v.strip()] or None
    if kind == "where":
        return _where_value(raw, path) or None
    if kind == "kv":
        return _kv_value(raw, path) or None
    if kind == "cases":
        return _cases_value(raw, path)
    if kind == "paths":
        return _paths_value(raw, path)
    if kind == "json":
        return text_load(raw, path=path)
    raise ValueError(f"unknown field kind {kind!r}")


def _is_blank(row: Row) -> bool:
    for value in row.values.values():
        if isinstance(value, dict):
            if any(v.strip() for k, v in value.items() if k != "mode"):
                return False
        elif value:
            return False
    return True


def _fields(params: list[Param], values: dict, path: str) -> dict:
    out = {}
    for param in params:
        value = _value(param, values.get(param.key), f"{path}.{param.key}")
        if value is not None:
            out[param.key] = value
    return out


def _goal(row: Row, path: str) -> dict:
    goal: dict[str, Any] = {"name": row.values.get("name", "").strip()}
    when = row.values.get("when") or {}
    if when.get("mode") == "event":
        event = when.get("event", "").strip()
        if not event:
            raise JourneyError("name the event", path=f"{path}.event")
        goal["event"] = event
        where = _where_value(row.values.get("where", ""), f"{path}.where")
        if where:
            goal["where"] = where
    else:
        goal["filter"] = _filter_value(when, f"{path}.filter")
    return goal


def state_definition(state: EditorState, *, slug: str | None = None) -> dict:
    """The definition the rows describe (not yet validated: `journey_parse` does that), or
    JourneyError naming the first field the rows cannot read. Each row's index in its section is
    its index in the definition; blank rows are left out."""
    top = state.top
    data: dict[str, Any] = {"version": lang.VERSION, "name": top.get("name", "").strip()}
    if slug:
        data["slug"] = slug
    if top.get("description", "").strip():
        data["description"] = top["description"].strip()
    triggers = []
    for row in state.triggers:
        if row.kind != "manual" and _is_blank(row):
            continue
        path = f"triggers[{len(triggers)}]"
        trigger = _fields(TRIGGER_PARAMS[row.kind], row.values, path)
        if row.kind in ("stage_changed", "manual"):
            trigger = {row.kind: True, **trigger}
        elif row.kind == "grade" and str(trigger.get("grade", "")).startswith("="):
            trigger = {"grade": trigger["grade"][1:], "exactly": True}
        elif row.kind not in trigger:
            raise JourneyError("is required", path=f"{path}.{row.kind}")
        triggers.append(trigger)
    data["triggers"] = triggers
    entry = _filter_value(top.get("entry") or {}, "entry")
    if entry is not None:
        data["entry"] = entry
    data["reentry"] = top.get("reentry") or "not_while_in"
    if top.get("reentry_days", "").strip():
        data["reentry_days"] = _number(top["reentry_days"], "reentry_days", integer=True)
    if top.get("cap_emails", "").strip() or top.get("cap_days", "").strip():
        if not (top.get("cap_emails", "").strip() and top.get("cap_days", "").strip()):
            raise JourneyError("a cap needs both: at most N emails per D days", path="cap")
        data["cap"] = {"emails": _number(top["cap_emails"], "cap.emails", integer=True),
                       "days": _number(top["cap_days"], "cap.days")}
    for section, key in (("goals", "goals"), ("exits", "exit_when")):
        goals = []
        for row in getattr(state, section):
            if _is_blank(row):
                continue
            goals.append(_goal(row, f"{key}[{len(goals)}]"))
        if goals:
            data[key] = goals
    if top.get("start", "").strip():
        data["start"] = top["start"].strip()
    nodes = []
    used: set[str] = {r.values.get("id", "").strip() for r in state.nodes}
    for row in state.nodes:
        if _is_blank(row):
            continue
        path = f"nodes[{len(nodes)}]"
        node_id = row.values.get("id", "").strip()
        if not node_id:
            base, n = row.kind.replace("_", "-"), len(nodes) + 1
            while f"{base}-{n}" in used:
                n += 1
            node_id = f"{base}-{n}"
            used.add(node_id)
            row.values["id"] = node_id
        node: dict[str, Any] = {"id": node_id, "type": row.kind}
        if row.values.get("name", "").strip():
            node["name"] = row.values["name"].strip()
        node.update(_fields(NODE_PARAMS[row.kind], row.values, path))
        nodes.append(node)
    data["nodes"] = nodes
    return data


def state_row_errors(state: EditorState, path: str, message: str) -> None:
    """Put a validation error on the row it is about (by the path's section and index)."""
    match = re.match(r"\A(triggers|goals|exit_when|nodes)\[(\d+)\]", path or "")
    if not match:
        return
    section = {"exit_when": "exits"}.get(match.group(1), match.group(1))
    index = int(match.group(2))
    rows = [r for r in getattr(state, section) if section == "triggers" and r.kind == "manual" or not _is_blank(r)]
    if index < len(rows):
        rows[index].error = f"{path}: {message}" if path else message


# --- what the template draws ----------------------------------------------------------------------

def field_views(prefix: str, params: list[Param], values: dict, options: dict) -> list[dict]:
    """Everything the template needs to draw a row's fields."""
    return [field_view(f"{prefix}-{param.key}", param, values.get(param.key, _value_text(param, None)), options)
            for param in params]


def entry_view(state: EditorState, options: dict) -> dict:
    """The "who may enter" field, named as `state_from_post` reads it back."""
    return field_view(ENTRY.key, ENTRY, state.top.get("entry") or _filter_parts(None, ENTRY.modes), options)


def field_view(name: str, param: Param, value: Any, options: dict) -> dict:
    """What the template needs to draw one field posted as `name` (a filter's parts as
    `name-mode`, `name-segment`, …)."""
    choices = list(options.get(param.kind, [])) or list(param.choices)
    if isinstance(value, str) and value and choices and value not in {v for v, _ in choices}:
        choices.insert(0, (value, f"{value} (not found)"))
    view = {"param": param, "name": name, "id": f"id_{name}", "value": value, "options": choices,
            "multiline": param.kind in ("where", "kv", "cases", "paths", "json")}
    if param.kind == "filter":
        view["modes"] = [(m, MODE_LABELS[m]) for m in param.modes]
        view["ops"] = [(op, OP_LABELS[op]) for op in FIELD_OPS]
        view["segments"] = list(options.get("segment", []))
        chosen = (value or {}).get("segment", "")
        if chosen and chosen not in {v for v, _ in view["segments"]}:
            view["segments"].insert(0, (chosen, f"{chosen} (not found)"))
    elif param.kind == "weekdays":
        view["days"] = [(key, label, key in (value or [])) for key, label in WEEKDAY_LABELS]
    return view
