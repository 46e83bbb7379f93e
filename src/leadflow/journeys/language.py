"""The journey definition: a typed, versioned description of a nurture program, the same in the
API, the UI and files kept in git (YAML or JSON, `leadflow journeys apply FILE`).

A definition names its triggers, the filter people must also match to enter, the re-entry
policy, goals (a filter or an event that takes people out at once, as a conversion), exit rules,
an optional journey-wide email cap, and a graph of nodes::

    version: 1
    name: Ebook nurture
    triggers:
      - event: Asset Downloaded
        where: [{field: properties.magnet_slug, op: eq, value: retirement-guide}]
    reentry: once
    goals:
      - name: Became MQL
        filter: {field: lifecycle_stage, op: in, value: [mql, sql, opportunity, customer]}
    nodes:
      - {id: wait-2d, type: wait, days: 2, next: thanks}
      - {id: thanks, type: send_email, template: retirement-thanks, next: wait-3d}
      ...

The first node is the start unless `start` names another. A node's `next` is where people go
after it; a node without `next` (and not a branch) ends the journey for them (completed).
Filters anywhere (entry, branches, goals) are the segment filter language
(`leadflow.segments.language`), written without the `version` key or with it.

Every validation error names the bad part by its path (`nodes[3].days`) and says what would be
right. Checks that need the graph or the workspace (unreachable nodes, unknown templates) are the
linter's (`leadflow.journeys.lint`), so a draft can be saved before it is finished.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from leadflow.core.services import ServiceError
from leadflow.segments import language as seglang

VERSION = 1
MAX_NODES = 500
NODE_ID = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
_TIME_RE = re.compile(r"\A([01]\d|2[0-3]):([0-5]\d)\Z")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WAIT_DAYS = 3650


class JourneyError(ServiceError):
    """A definition that is not valid. `path` names the bad part (``nodes[3].days``)."""

    def __init__(self, message: str, *, path: str = ""):
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


NodeId = Annotated[str, Field(pattern=NODE_ID)]
Slug = Annotated[str, Field(min_length=1, max_length=100)]
Name = Annotated[str, Field(min_length=1, max_length=255)]


def _time(value: str) -> str:
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise ValueError(f"a local time is HH:MM on a 24-hour clock, such as \"10:00\", not {value!r}")
    return value


def time_of(value: str) -> dt.time:
    hours, minutes = value.split(":")
    return dt.time(int(hours), int(minutes))


class FilterRef(_Strict):
    """A segment filter, parsed when the definition is; `flt` is the parsed filter."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    flt: Any

    def dump(self) -> dict:
        return seglang.filter_dump(self.flt)


def _filter(value: Any) -> FilterRef:
    if isinstance(value, FilterRef):
        return value
    try:
        return FilterRef(flt=seglang.filter_parse(value))
    except seglang.FilterError as exc:
        raise ValueError(f"{exc.path + ': ' if getattr(exc, 'path', '') else ''}{exc}") from None


FilterField = Annotated[Any, Field()]


class _WithFilter(_Strict):
    @field_validator("filter", "if_", "entry", check_fields=False)
    @classmethod
    def _parse_filter(cls, value):
        return None if value is None else _filter(value)


# --- triggers ---------------------------------------------------------------------------------

class EventTrigger(_Strict):
    event: Name
    where: list[seglang.PropertyCondition] = Field(default_factory=list, max_length=50)


class SegmentEnteredTrigger(_Strict):
    segment_entered: Slug


class SegmentExitedTrigger(_Strict):
    segment_exited: Slug


class FormSubmittedTrigger(_Strict):
    form_submitted: Slug


class ScoreTrigger(_Strict):
    """Entered when the score crosses from below `at_least` to at or above it."""

    score: Literal["engagement_score", "fit_score", "conversion_probability"]
    at_least: float


GRADES = ("A", "B", "C", "D")  # the fit grades, best first (`leadflow.scoring.engine.grade_for`)


class GradeTrigger(_Strict):
    """Entered when the fit grade reaches `grade` or better, from a worse grade or from none yet
    (with `exactly`: when it becomes `grade`, from any other)."""

    grade: Literal["A", "B", "C", "D"]
    exactly: bool = False

    @field_validator("grade", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def grades(self) -> tuple[str, ...]:
        """The grades that count as reached."""
        return (self.grade,) if self.exactly else GRADES[:GRADES.index(self.grade) + 1]


class StageTrigger(_Strict):
    stage_changed: Literal[True]
    to: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(default_factory=list)
    from_: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(default_factory=list, alias="from")


class DateTrigger(_Strict):
    """Entered `offset_days` after (negative: before) the date in trait `date_trait`."""

    date_trait: Annotated[str, Field(min_length=1, max_length=100)]
    offset_days: Annotated[int, Field(strict=True, ge=-MAX_WAIT_DAYS, le=MAX_WAIT_DAYS)] = 0


class ManualTrigger(_Strict):
    """Entered only by hand, through the API or by another journey."""

    manual: Literal[True]


TRIGGER_KINDS: dict[str, type[_Strict]] = {
    "event": EventTrigger, "segment_entered": SegmentEnteredTrigger, "segment_exited": SegmentExitedTrigger,
    "form_submitted": FormSubmittedTrigger, "score": ScoreTrigger, "grade": GradeTrigger,
    "stage_changed": StageTrigger, "date_trait": DateTrigger, "manual": ManualTrigger,
}


def _kind_discriminator(kinds: dict[str, type]):
    model_kind = {model: key for key, model in kinds.items()}

    def kind_of(value: Any) -> str | None:
        if isinstance(value, dict):
            for key in kinds:
                if key in value:
                    return key
            return None
        return model_kind.get(type(value))

    return kind_of


Trigger = Annotated[
    Union[tuple(Annotated[model, Tag(key)] for key, model in TRIGGER_KINDS.items())],  # type: ignore[misc]
    Discriminator(_kind_discriminator(TRIGGER_KINDS), custom_error_type="unknown_trigger",
                  custom_error_message="a trigger is an object with one of the keys " + ", ".join(TRIGGER_KINDS)),
]


# --- goals and exit rules ---------------------------------------------------------------------

class Goal(_WithFilter):
    """A filter or an event that takes people out at once whenever it becomes true."""

    name: Name
    filter: Any = None
    event: Name | None = None
    where: list[seglang.PropertyCondition] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _one(self):
        if (self.filter is None) == (self.event is None):
            raise ValueError("a goal has either a `filter` or an `event`, not both and not neither")
        if self.where and self.event is None:
            raise ValueError("`where` narrows an `event` goal; a filter goal has none")
        return self


class Cap(_Strict):
    """At most `emails` emails from this journey per `days` days, per person."""

    emails: Annotated[int, Field(strict=True, ge=1, le=100)]
    days: Annotated[float, Field(gt=0, le=365)]


# --- nodes ------------------------------------------------------------------------------------

class _Node(_Strict):
    id: NodeId
    name: str = Field(default="", max_length=200)


class _Next(_Node):
    next: NodeId | None = None


class WaitNode(_Next):
    """Wait a duration."""

    type: Literal["wait"]
    days: Annotated[float, Field(ge=0, le=MAX_WAIT_DAYS)] = 0
    hours: Annotated[float, Field(ge=0, le=MAX_WAIT_DAYS * 24)] = 0
    minutes: Annotated[float, Field(ge=0, le=MAX_WAIT_DAYS * 1440)] = 0

    @model_validator(mode="after")
    def _some(self):
        if not (self.days or self.hours or self.minutes):
            raise ValueError("a wait needs `days`, `hours` or `minutes` greater than 0")
        return self

    @property
    def duration(self) -> dt.timedelta:
        return dt.timedelta(days=self.days, hours=self.hours, minutes=self.minutes)


class WaitUntilNode(_Next):
    """Wait until the next time the contact's local clock shows `time` on one of `weekdays`
    (every day when empty): "next Tuesday 10:00 local"."""

    type: Literal["wait_until"]
    time: str
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)

    _check_time = field_validator("time")(classmethod(lambda cls, v: _time(v)))


class WaitForDateNode(_Next):
    """Wait until `offset_days` after (negative: before) the date in trait `date_trait`, at `time`
    local. A date already past, or missing, goes on at once (to `missing_next` when it is missing
    and that is set)."""

    type: Literal["wait_for_date"]
    date_trait: Annotated[str, Field(min_length=1, max_length=100)]
    offset_days: Annotated[int, Field(strict=True, ge=-MAX_WAIT_DAYS, le=MAX_WAIT_DAYS)] = 0
    time: str = "09:00"
    missing_next: NodeId | None = None

    _check_time = field_validator("time")(classmethod(lambda cls, v: _time(v)))


class WaitForEventNode(_Next):
    """Wait until the person performs `event` (optionally with property conditions); go to `next`
    when they do, to `timeout_next` when `timeout_days` pass first."""

    type: Literal["wait_for_event"]
    event: Name
    where: list[seglang.PropertyCondition] = Field(default_factory=list, max_length=50)
    timeout_days: Annotated[float, Field(gt=0, le=MAX_WAIT_DAYS)]
    timeout_next: NodeId | None = None


class BranchNode(_WithFilter, _Node):
    """Go to `yes` when the person matches the filter `if`, else to `no`."""

    type: Literal["branch"]
    if_: Any = Field(alias="if")
    yes: NodeId | None = None
    no: NodeId | None = None


class Case(_Strict):
    equals: list[Any] = Field(min_length=1, max_length=100)
    next: NodeId | None = None

    @field_validator("equals", mode="before")
    @classmethod
    def _listify(cls, value):
        return value if isinstance(value, list) else [value]


class SwitchNode(_Node):
    """A multi-way split on one field (a profile field or `traits.NAME`): the first case whose
    values include the person's value wins; `default` otherwise (text compares without case)."""

    type: Literal["switch"]
    field: str
    cases: list[Case] = Field(min_length=1, max_length=50)
    default: NodeId | None = None

    @field_validator("field")
    @classmethod
    def _known(cls, value: str) -> str:
        seglang.field_spec(value)
        return value


class Path(_Strict):
    percent: Annotated[float, Field(gt=0, le=100)]
    next: NodeId | None = None
    name: str = Field(default="", max_length=100)


class RandomNode(_Node):
    """Split people at random (stable per person and node) by percentages summing to 100."""

    type: Literal["random"]
    paths: list[Path] = Field(min_length=2, max_length=10)

    @model_validator(mode="after")
    def _sum(self):
        total = sum(p.percent for p in self.paths)
        if abs(total - 100) > 1e-9:
            raise ValueError(f"the paths' percentages add up to {total:g}, not 100")
        return self


class HoldoutNode(_Next):
    """Hold `percent` of people out as a control group: they receive nothing from here on and stay
    `days` days (their conversions are counted, to measure the lift the journey causes); the rest
    go to `next`."""

    type: Literal["holdout"]
    percent: Annotated[float, Field(gt=0, lt=100)]
    days: Annotated[float, Field(gt=0, le=MAX_WAIT_DAYS)] = 90


class SendEmailNode(_Next):
    type: Literal["send_email"]
    template: Slug
    topic: str | None = Field(default=None, max_length=100)
    server: Slug | None = None


class WebhookNode(_Next):
    """Deliver a signed webhook (Standard Webhooks) to an endpoint: SMS, ads audiences, direct
    mail, CRM and chat tools. `data` is sent beside the contact's profile. With a `topic` (a step
    that reaches the person), people the consent gate stops for that topic are skipped."""

    type: Literal["webhook"]
    endpoint: Slug
    event_type: Annotated[str, Field(min_length=1, max_length=100)] = "journey.step"
    data: dict = Field(default_factory=dict)
    topic: str | None = Field(default=None, max_length=100)

    @field_validator("data")
    @classmethod
    def _own_keys(cls, value: dict) -> dict:
        taken = sorted(set(value) & {"journey", "node", "enrollment", "contact"})
        if taken:
            raise ValueError(f"`data` cannot use {', '.join(taken)}: LeadFlow fills those keys of the payload")
        return value


class UpdateTraitsNode(_Next):
    type: Literal["update_traits"]
    traits: dict[str, Any] = Field(min_length=1)


class TagNode(_Next):
    """Add or remove tags (the `tags` trait, a list)."""

    type: Literal["tag"]
    add: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)
    remove: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some(self):
        if not self.add and not self.remove:
            raise ValueError("a tag step needs tags to `add` or `remove`")
        return self


class ListNode(_Next):
    """Add to or remove from a static list."""

    type: Literal["list"]
    add: Slug | None = None
    remove: Slug | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.add is None) == (self.remove is None):
            raise ValueError("a list step names one static list to `add` to or `remove` from")
        return self


class ScoreNode(_Next):
    """Adjust the engagement score by `points` (negative lowers it)."""

    type: Literal["score"]
    points: Annotated[float, Field(ge=-1000, le=1000)]


class StageNode(_Next):
    type: Literal["stage"]
    to: Annotated[str, Field(min_length=1, max_length=32)]


class SalesAlertNode(_Next):
    """Hand the person to sales: route them to an owner (kept if they have an open assignment)
    and alert the owner with what made them hot; `note` is added to the alert."""

    type: Literal["sales_alert"]
    note: str = Field(default="", max_length=500)


class NotifyOwnerNode(_Next):
    """Alert the person's owner (or `user` when set) without changing the assignment; with `task`,
    a sales task for them too, due `due_days` days later when set."""

    type: Literal["notify_owner"]
    note: str = Field(default="", max_length=500)
    task: str = Field(default="", max_length=200)
    user: str | None = Field(default=None, max_length=150)
    due_days: Annotated[float, Field(ge=0, le=MAX_WAIT_DAYS)] | None = None

    @model_validator(mode="after")
    def _due_needs_task(self):
        if self.due_days is not None and not self.task.strip():
            raise ValueError("`due_days` is the due date of a task: set `task` too")
        return self


class AssignOwnerNode(_Next):
    type: Literal["assign_owner"]
    user: Annotated[str, Field(min_length=1, max_length=150)]


class EnrollNode(_Next):
    type: Literal["enroll"]
    journey: Slug


class UnenrollNode(_Next):
    type: Literal["unenroll"]
    journey: Slug


class ExitNode(_Node):
    type: Literal["exit"]
    reason: str = Field(default="", max_length=200)


class StreamPool(_Strict):
    stream: Slug
    stages: list[Annotated[str, Field(min_length=1, max_length=32)]] = Field(default_factory=list)


class Cadence(_Strict):
    every_days: Annotated[int, Field(strict=True, ge=1, le=365)]
    weekday: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] | None = None
    time: str = "10:00"

    _check_time = field_validator("time")(classmethod(lambda cls, v: _time(v)))


class Slowdown(_Strict):
    """Weak engagement slows the cadence: below `engagement_below`, every `every_days`."""

    engagement_below: float
    every_days: Annotated[int, Field(strict=True, ge=1, le=365)]


class StreamNode(_Next):
    """A stay-in-touch drip: every cadence, the next piece of the stream for the person's stage
    (the pool whose `stages` include it; a pool without stages is the fallback) and role (trait
    `role_trait`) that they have not had. Someone who has had everything is *exhausted* and
    waits for new content. A stream never ends by itself: goals, exit rules or `until` do
    (`until` is a filter that, once true at a cadence, sends them to `next`)."""

    type: Literal["stream"]
    pools: list[StreamPool] = Field(min_length=1, max_length=20)
    cadence: Cadence
    slow: Slowdown | None = None
    role_trait: str = Field(default="role", min_length=1, max_length=100)
    topic: str | None = Field(default=None, max_length=100)
    until: Any = None

    @field_validator("until")
    @classmethod
    def _parse_until(cls, value):
        return None if value is None else _filter(value)


NODE_TYPES: dict[str, type[_Node]] = {
    "wait": WaitNode, "wait_until": WaitUntilNode, "wait_for_date": WaitForDateNode,
    "wait_for_event": WaitForEventNode, "branch": BranchNode, "switch": SwitchNode, "random": RandomNode,
    "holdout": HoldoutNode, "send_email": SendEmailNode, "webhook": WebhookNode,
    "update_traits": UpdateTraitsNode, "tag": TagNode, "list": ListNode, "score": ScoreNode, "stage": StageNode,
    "sales_alert": SalesAlertNode, "notify_owner": NotifyOwnerNode, "assign_owner": AssignOwnerNode,
    "enroll": EnrollNode, "unenroll": UnenrollNode, "exit": ExitNode, "stream": StreamNode,
}
WAIT_TYPES = frozenset({"wait", "wait_until", "wait_for_date", "wait_for_event", "stream", "holdout"})


def _node_type(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if kind in NODE_TYPES else None
    for key, model in NODE_TYPES.items():
        if type(value) is model:
            return key
    return None


Node = Annotated[
    Union[tuple(Annotated[model, Tag(key)] for key, model in NODE_TYPES.items())],  # type: ignore[misc]
    Discriminator(_node_type, custom_error_type="unknown_node_type",
                  custom_error_message="a node's `type` is one of " + ", ".join(NODE_TYPES)),
]

REENTRY = ("once", "not_while_in", "every_time", "once_per_period")


class Definition(_Strict):
    version: Literal[1] = VERSION
    name: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9\-]{0,99}$")] | None = None
    description: str = Field(default="", max_length=2000)
    triggers: list[Trigger] = Field(min_length=1, max_length=20)
    entry: Any = None
    reentry: Literal["once", "not_while_in", "every_time", "once_per_period"] = "not_while_in"
    reentry_days: Annotated[int, Field(strict=True, ge=1, le=3650)] | None = None
    cap: Cap | None = None
    goals: list[Goal] = Field(default_factory=list, max_length=20)
    exit_when: list[Goal] = Field(default_factory=list, max_length=20)
    start: NodeId | None = None
    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)

    @field_validator("entry")
    @classmethod
    def _parse_entry(cls, value):
        return None if value is None else _filter(value)

    @model_validator(mode="after")
    def _graph(self):
        ids = [n.id for n in self.nodes]
        seen = set()
        for i, node_id in enumerate(ids):
            if node_id in seen:
                raise ValueError(f"nodes[{i}]: the node id {node_id!r} is used twice")
            seen.add(node_id)
        if self.start is not None and self.start not in seen:
            raise ValueError(f"start: there is no node {self.start!r}")
        for i, node in enumerate(self.nodes):
            for key, target in node_targets(node):
                if target is not None and target not in seen:
                    raise ValueError(f"nodes[{i}].{key}: there is no node {target!r}")
        if self.reentry == "once_per_period" and self.reentry_days is None:
            raise ValueError("reentry_days: `once_per_period` needs the period in days")
        return self

    @property
    def start_id(self) -> str:
        return self.start or self.nodes[0].id

    def node(self, node_id: str):
        return self.by_id().get(node_id)

    def by_id(self) -> dict[str, Any]:
        cached = self.__dict__.get("_by_id")
        if cached is None:
            cached = {n.id: n for n in self.nodes}
            object.__setattr__(self, "_by_id", cached)  # frozen model: a derived cache only
        return cached


def node_targets(node) -> list[tuple[str, str | None]]:
    """Where a node can send people: (key, node id or None for "the journey ends")."""
    if isinstance(node, BranchNode):
        return [("yes", node.yes), ("no", node.no)]
    if isinstance(node, SwitchNode):
        return [(f"cases[{i}].next", c.next) for i, c in enumerate(node.cases)] + [("default", node.default)]
    if isinstance(node, RandomNode):
        return [(f"paths[{i}].next", p.next) for i, p in enumerate(node.paths)]
    if isinstance(node, WaitForEventNode):
        return [("next", node.next), ("timeout_next", node.timeout_next)]
    if isinstance(node, WaitForDateNode):
        return [("next", node.next), ("missing_next", node.missing_next)]
    if isinstance(node, ExitNode):
        return []
    return [("next", node.next)]


def filters_of(definition: Definition) -> list[tuple[str, Any]]:
    """Every filter in a definition with its path (entry, goals, branches, stream `until`)."""
    out = []
    if definition.entry is not None:
        out.append(("entry", definition.entry.flt))
    for key in ("goals", "exit_when"):
        for i, goal in enumerate(getattr(definition, key)):
            if goal.filter is not None:
                out.append((f"{key}[{i}].filter", goal.filter.flt))
    for i, node in enumerate(definition.nodes):
        if isinstance(node, BranchNode):
            out.append((f"nodes[{i}].if", node.if_.flt))
        elif isinstance(node, StreamNode) and node.until is not None:
            out.append((f"nodes[{i}].until", node.until.flt))
    return out


# --- parsing and dumping ----------------------------------------------------------------------

_DEFINITION = TypeAdapter(Definition)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in NODE_TYPES or part in TRIGGER_KINDS or part in ("function-after",):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"unknown key {error['loc'][-1]!r}"
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch" and error["loc"][-1:] in (("id",), ("next",), ("start",)):
        return (f"{error.get('input')!r} is not a node id: lower-case letters, digits, '-' and '_', "
                "starting with a letter or digit, at most 64")
    return msg.removeprefix("Value error, ")


def journey_parse(data: object) -> Definition:
    """The valid definition `data` describes, or JourneyError naming the bad part."""
    if isinstance(data, Definition):
        return data
    if not isinstance(data, dict):
        raise JourneyError("a journey definition is an object with `name`, `triggers` and `nodes`")
    version = data.get("version", VERSION)
    if isinstance(version, bool) or version != VERSION:
        raise JourneyError(f"unsupported journey version {version!r}; this LeadFlow reads version {VERSION}",
                           path="version")
    try:
        return _DEFINITION.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        message = _message(first)
        path = _path(tuple(first["loc"]))
        inner = re.match(r"\A((?:nodes|goals|exit_when)\[\d+\][\w.\[\]]*): (.*)\Z", message, re.S)
        if inner and not path:
            path, message = inner.group(1), inner.group(2)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise JourneyError(message, path=path) from None


def journey_dump(definition: Definition) -> dict:
    """The canonical JSON of a definition (what is stored and exported)."""
    data = _DEFINITION.dump_python(definition, mode="json", by_alias=True, exclude_defaults=True)
    data["version"] = definition.version
    if definition.entry is not None:
        data["entry"] = definition.entry.dump()
    for key in ("goals", "exit_when"):
        for out, goal in zip(data.get(key, []), getattr(definition, key)):
            if goal.filter is not None:
                out["filter"] = goal.filter.dump()
    for out, node in zip(data["nodes"], definition.nodes):
        out["type"] = node.type
        if isinstance(node, BranchNode):
            out["if"] = node.if_.dump()
        elif isinstance(node, StreamNode) and node.until is not None:
            out["until"] = node.until.dump()
    order = ["version", "name", "slug", "description", "triggers", "entry", "reentry", "reentry_days", "cap",
             "goals", "exit_when", "start", "nodes"]
    return {key: data[key] for key in order if key in data}
