"""Reads over journeys, always scoped to one workspace: the list with each journey's key numbers,
the figures per node the journey page draws (waiting, passed, converted, exited, failed, and each
email's results), the lift a holdout measures, the people at a node, a contact's journeys with
their history, and versions.

Every figure comes from grouped queries: a page costs the same few queries however many journeys,
nodes or people it shows. Conversions are credited to the node the person had passed last (the
`node` of their `converted` step); email figures are read from the outbox rows a send node wrote
(`Message.source` = ``journey:{journey id}:{node id}``) and their first-time columns, which record
human opens and clicks only.
"""

from __future__ import annotations

import dataclasses

from django.db.models import Count, Prefetch, Q, QuerySet
from django.db.models.fields.json import KT

from leadflow.contacts.models import Contact
from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys.engine import version_definition
from leadflow.journeys.models import (Enrollment, EnrollmentState, EnrollmentStep, Journey, JourneyVersion,
                                      StepKind)
from leadflow.messaging.models import Message

# Step kinds that mean "went through this node and on".
PASSED_KINDS = (StepKind.PASSED, StepKind.SENT, StepKind.WEBHOOK, StepKind.SKIPPED)
# What a node's enrollment list can show: who waits there now, or who went through or ended there.
NODE_LISTS = ("active", "passed", "converted", "exited", "failed", "completed")
EMAIL_FIGURES = ("queued", "sent", "delivered", "opened", "clicked", "unsubscribed", "bounced", "blocked")


def _source(journey_id: int, node_id: str = "") -> str:
    return f"journey:{journey_id}:{node_id}"


def journey_id_of_source(source: str) -> int | None:
    """The journey that queued a message, from its `source` (`journey:<id>:<node>`), else None."""
    kind, _, rest = (source or "").partition(":")
    head = rest.partition(":")[0]
    return int(head) if kind == "journey" and head.isdigit() else None


@dataclasses.dataclass
class JourneyNumbers:
    """A journey's key numbers: people in it now, who ever entered and how they ended, emails sent."""

    active: int = 0
    entered: int = 0
    completed: int = 0
    converted: int = 0
    exited: int = 0
    failed: int = 0
    emails_sent: int = 0

    @property
    def conversion_rate(self) -> float | None:
        return self.converted / self.entered if self.entered else None

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "conversion_rate": self.conversion_rate}


def journey_get(*, workspace: Workspace, journey_id: int) -> Journey | None:
    return (Journey.objects.filter(workspace=workspace, pk=journey_id).select_related("version", "owner")
            .first())


def journey_query(*, workspace: Workspace, status: str | None = None) -> QuerySet[Journey]:
    """The workspace's journeys (with a status, only those); page it and read `journey_numbers`."""
    qs = Journey.objects.filter(workspace=workspace).select_related("version")
    return qs.filter(status=status) if status else qs


def journey_numbers(*, journeys: list[Journey]) -> dict[int, JourneyNumbers]:
    """{journey id: its key numbers} in two queries (enrollments by state, sent emails by source)."""
    numbers = {j.pk: JourneyNumbers() for j in journeys}
    if not journeys:
        return numbers
    for journey_id, state, n in (Enrollment.objects.filter(journey_id__in=list(numbers)).order_by()
                                 .values_list("journey_id", "state").annotate(n=Count("pk"))):
        row = numbers[journey_id]
        row.entered += n
        if state == EnrollmentState.ACTIVE:
            row.active += n
        else:
            setattr(row, state, getattr(row, state) + n)
    sources = Q()
    for journey_id in numbers:
        sources |= Q(source__startswith=_source(journey_id))
    sent = (Message.objects.filter(workspace_id__in={j.workspace_id for j in journeys}, sent_at__isnull=False)
            .filter(sources).order_by().values_list("source").annotate(n=Count("pk")))
    for source, n in sent:
        journey_id = int(source.split(":")[1])
        if journey_id in numbers:
            numbers[journey_id].emails_sent += n
    return numbers


def journey_list(*, workspace: Workspace, status: str | None = None) -> list[Journey]:
    """The workspace's journeys, newest first, each with `.numbers` (JourneyNumbers)."""
    journeys = list(journey_query(workspace=workspace, status=status).order_by("-pk"))
    numbers = journey_numbers(journeys=journeys)
    for journey in journeys:
        journey.numbers = numbers[journey.pk]
    return journeys


# --- figures per node -----------------------------------------------------------------------------

@dataclasses.dataclass
class EmailFigures:
    """Results of one send node's emails. `delivered` is accepted by the receiving server and not
    bounced (as A/B tests count it); rates are over delivered."""

    queued: int = 0
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    bounced: int = 0
    blocked: int = 0

    def rate(self, count: int) -> float | None:
        return count / self.delivered if self.delivered else None

    @property
    def click_rate(self) -> float | None:
        return self.rate(self.clicked)

    @property
    def open_rate(self) -> float | None:
        return self.rate(self.opened)

    @property
    def unsubscribe_rate(self) -> float | None:
        return self.rate(self.unsubscribed)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "click_rate": self.click_rate, "open_rate": self.open_rate,
                "unsubscribe_rate": self.unsubscribe_rate}


@dataclasses.dataclass
class NodeStats:
    """What happened at one node: `waiting` there now; `passed` through it (sent, webhook queued,
    skipped included); `converted` (conversions credited to it: the last node passed before a
    goal was met), `exited`, `failed`, `completed` (the journey ended after it); `entered` (people
    who started here); `outcomes` counts passes by the way they went (yes/no, path, event/timeout)."""

    id: str
    type: str
    name: str = ""
    waiting: int = 0
    entered: int = 0
    passed: int = 0
    converted: int = 0
    exited: int = 0
    failed: int = 0
    completed: int = 0
    outcomes: dict[str, int] = dataclasses.field(default_factory=dict)
    email: EmailFigures | None = None

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["email"] = self.email.as_dict() if self.email else None
        return data


@dataclasses.dataclass
class Lift:
    """Conversions of the holdout (control) group against everyone else (treated): the lift the
    journey causes. `p_value` is a two-proportion z-test's (None while undefined)."""

    holdout: int
    holdout_converted: int
    treated: int
    treated_converted: int
    p_value: float | None

    @property
    def holdout_rate(self) -> float | None:
        return self.holdout_converted / self.holdout if self.holdout else None

    @property
    def treated_rate(self) -> float | None:
        return self.treated_converted / self.treated if self.treated else None

    @property
    def lift(self) -> float | None:
        """Treated rate minus holdout rate (percentage points as a fraction)."""
        if self.holdout_rate is None or self.treated_rate is None:
            return None
        return self.treated_rate - self.holdout_rate

    @property
    def relative(self) -> float | None:
        """How much more the treated convert, relative to the holdout (0.5 = 50% more)."""
        if not self.holdout_rate or self.treated_rate is None:
            return None
        return self.treated_rate / self.holdout_rate - 1

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "holdout_rate": self.holdout_rate, "treated_rate": self.treated_rate,
                "lift": self.lift, "relative": self.relative}


@dataclasses.dataclass
class JourneyStats:
    """The journey page's figures: `nodes` in the order of `definition` (the version shown),
    `other_nodes` for node ids only older versions have (people there or history there)."""

    version: JourneyVersion | None
    definition: lang.Definition | None
    nodes: list[NodeStats]
    other_nodes: list[NodeStats]
    lift: Lift | None
    numbers: JourneyNumbers

    def by_id(self) -> dict[str, NodeStats]:
        return {n.id: n for n in (*self.nodes, *self.other_nodes)}


def journey_shown_version(journey: Journey) -> JourneyVersion | None:
    """The version a journey's page shows by default: the published one, else the latest."""
    return journey.version or journey.versions.order_by("-number").first()


def journey_node_stats(*, journey: Journey, version: JourneyVersion | None = None) -> JourneyStats:
    """Figures per node. Without `version`, every version's people count (at the node id they
    share) and the nodes are those of the published (else latest) version; with it, only the
    people who are on that version. Email figures always count every version's emails."""
    enrollments = Enrollment.objects.filter(journey=journey)
    steps = EnrollmentStep.objects.filter(journey=journey)
    if version is not None:
        enrollments = enrollments.filter(version=version)
        steps = steps.filter(enrollment__version=version)
    shown = version or journey_shown_version(journey)
    definition = version_definition(shown) if shown is not None else None
    stats: dict[str, NodeStats] = {}
    if definition is not None:
        for node in definition.nodes:
            stats[node.id] = NodeStats(id=node.id, type=node.type, name=node.name)
    others: dict[str, NodeStats] = {}

    def at(node_id: str) -> NodeStats:
        if node_id in stats:
            return stats[node_id]
        return others.setdefault(node_id, NodeStats(id=node_id, type=""))

    for node_id, n in (enrollments.filter(state=EnrollmentState.ACTIVE).order_by().values_list("node")
                       .annotate(n=Count("pk"))):
        at(node_id).waiting += n
    for node_id, kind, outcome, group, n in (
            steps.order_by().values_list("node", "kind", KT("detail__outcome"), KT("detail__group"))
            .annotate(n=Count("pk"))):
        row = at(node_id)
        if kind in PASSED_KINDS:
            row.passed += n
            outcome = outcome or group  # a holdout node's passes are the treated group
            if outcome:
                row.outcomes[outcome] = row.outcomes.get(outcome, 0) + n
        elif kind == StepKind.WAITING and group == "holdout":
            row.outcomes["holdout"] = row.outcomes.get("holdout", 0) + n
        elif kind == StepKind.ENTERED:
            row.entered += n
        elif kind in (StepKind.CONVERTED, StepKind.EXITED, StepKind.FAILED, StepKind.COMPLETED):
            setattr(row, kind, getattr(row, kind) + n)
    _email_figures(journey, [s for s in (*stats.values(), *others.values()) if s.type in ("send_email", "")])
    numbers = journey_numbers(journeys=[journey])[journey.pk]
    if version is not None:
        numbers = _version_numbers(enrollments, numbers.emails_sent)
    return JourneyStats(version=shown, definition=definition, nodes=list(stats.values()),
                        other_nodes=sorted(others.values(), key=lambda s: s.id),
                        lift=journey_lift(journey=journey, version=version, definition=definition),
                        numbers=numbers)


def _version_numbers(enrollments: QuerySet[Enrollment], emails_sent: int) -> JourneyNumbers:
    numbers = JourneyNumbers(emails_sent=emails_sent)
    for state, n in enrollments.order_by().values_list("state").annotate(n=Count("pk")):
        numbers.entered += n
        if state == EnrollmentState.ACTIVE:
            numbers.active += n
        else:
            setattr(numbers, state, getattr(numbers, state) + n)
    return numbers


def _email_figures(journey: Journey, rows: list[NodeStats]) -> None:
    """Fill `email` on send nodes (and on nodes of older versions that sent emails), one query."""
    from leadflow.messaging.abtest import DELIVERED

    if not rows:
        return
    wanted = {_source(journey.pk, row.id): row for row in rows}
    counts = {
        "queued": Count("pk"),
        "sent": Count("pk", filter=Q(sent_at__isnull=False)),
        "delivered": Count("pk", filter=DELIVERED),
        "opened": Count("pk", filter=Q(opened_at__isnull=False)),
        "clicked": Count("pk", filter=Q(clicked_at__isnull=False)),
        "unsubscribed": Count("pk", filter=Q(unsubscribed_at__isnull=False)),
        "bounced": Count("pk", filter=Q(bounced_at__isnull=False)),
        "blocked": Count("pk", filter=Q(status="blocked")),
    }
    found = (Message.objects.filter(workspace_id=journey.workspace_id, source__in=list(wanted)).order_by()
             .values("source").annotate(**counts))
    for figures in found:
        row = wanted[figures.pop("source")]
        row.email = EmailFigures(**figures)
        if not row.type:
            row.type = "send_email"
    for row in rows:
        if row.type == "send_email" and row.email is None:
            row.email = EmailFigures()


def journey_lift(*, journey: Journey, version: JourneyVersion | None = None,
                 definition: lang.Definition | None = None) -> Lift | None:
    """Holdout against treated conversions, or None when the journey holds nobody out."""
    from leadflow.messaging.abtest import ab_significance

    enrollments = Enrollment.objects.filter(journey=journey)
    conversions = EnrollmentStep.objects.filter(journey=journey, kind=StepKind.CONVERTED)
    if version is not None:
        enrollments = enrollments.filter(version=version)
        conversions = conversions.filter(enrollment__version=version)
    groups = dict(enrollments.order_by().values_list("group").annotate(n=Count("pk")))
    has_holdout = definition is not None and any(isinstance(n, lang.HoldoutNode) for n in definition.nodes)
    if not groups.get("holdout") and not has_holdout:
        return None
    converted = dict(conversions.order_by().values_list(KT("detail__group")).annotate(n=Count("pk")))
    holdout, treated = groups.get("holdout", 0), sum(n for g, n in groups.items() if g != "holdout")
    held_converted = converted.get("holdout", 0)
    treated_converted = sum(n for g, n in converted.items() if g != "holdout")
    _, _, p_value = ab_significance([(treated_converted, treated), (held_converted, holdout)])
    return Lift(holdout=holdout, holdout_converted=held_converted, treated=treated,
                treated_converted=treated_converted, p_value=p_value)


# --- people ---------------------------------------------------------------------------------------

def journey_enrollments(*, journey: Journey, node: str | None = None, state: str | None = None) -> QuerySet[Enrollment]:
    """The people of a journey (contact loaded; page with api.cursor or a Paginator, newest first).

    Without `node`: every enrollment, or those in `state` (active, completed, converted, exited,
    failed). With `node`: `active` (the default) is who waits there now; `passed` who went
    through it; `converted` whose conversion is credited to it; `exited`, `failed`, `completed`
    who ended there — the same people the node's figures count."""
    qs = Enrollment.objects.filter(journey=journey).select_related("contact", "version")
    if node is None:
        if state:
            if state not in EnrollmentState.values:
                raise ServiceError(f"state: one of {', '.join(EnrollmentState.values)}, not {state!r}")
            qs = qs.filter(state=state)
        return qs
    state = state or "active"
    if state not in NODE_LISTS:
        raise ServiceError(f"state: at a node, one of {', '.join(NODE_LISTS)}, not {state!r}")
    if state == "active":
        return qs.filter(state=EnrollmentState.ACTIVE, node=node)
    kinds = PASSED_KINDS if state == "passed" else (state,)
    through = EnrollmentStep.objects.filter(journey=journey, node=node, kind__in=kinds).values("enrollment_id")
    return qs.filter(pk__in=through)


def contact_journeys(*, contact: Contact) -> list[Enrollment]:
    """A contact's enrollments, newest first, each with `journey`, `version`, `steps_list` (its
    history, oldest first) and `node_label` (the current node's name or id, and type). Two queries."""
    rows = list(Enrollment.objects.filter(workspace_id=contact.workspace_id, contact=contact)
                .select_related("journey", "version")
                .prefetch_related(Prefetch("history", queryset=EnrollmentStep.objects.order_by("at", "pk"),
                                           to_attr="steps_list"))
                .order_by("-entered_at", "-pk"))
    for e in rows:
        e.node_label = node_label(e.version, e.node)
    return rows


def node_label(version: JourneyVersion, node_id: str) -> str:
    """"Thank-you email (send_email)" for a node of a version, or the bare id when it is not there."""
    try:
        node = version_definition(version).node(node_id)
    except ServiceError:
        node = None
    if node is None:
        return node_id
    return f"{node.name or node.id} ({node.type})"


def journey_versions(*, journey: Journey) -> list[JourneyVersion]:
    """Every version, newest first, each with `active` (people on it now) and `published` (it is
    the one new people enter)."""
    versions = list(journey.versions.order_by("-number"))
    active = dict(Enrollment.objects.filter(journey=journey, state=EnrollmentState.ACTIVE).order_by()
                  .values_list("version_id").annotate(n=Count("pk")))
    for v in versions:
        v.active = active.get(v.pk, 0)
        v.published = v.pk == journey.version_id
    return versions


def journey_version_get(*, journey: Journey, number: int) -> JourneyVersion | None:
    return journey.versions.filter(number=number).first()


def journey_waiting_by_node(*, journey: Journey, version: JourneyVersion) -> dict[str, int]:
    """{node id: people on `version` waiting there now}: what a new version may migrate."""
    return dict(Enrollment.objects.filter(journey=journey, version=version, state=EnrollmentState.ACTIVE)
                .order_by().values_list("node").annotate(n=Count("pk")))


@dataclasses.dataclass
class StuckGroup:
    """People waiting at a step for something outside the journey (a sales rep to route them to)."""

    node: str
    reason: str
    count: int


def journey_stuck(*, journey: Journey) -> list[StuckGroup]:
    """Who waits at a sales alert step because routing has nobody to give them to, by step and
    reason (one query)."""
    rows = (Enrollment.objects.filter(journey=journey, state=EnrollmentState.ACTIVE, data__has_key="waiting_for")
            .order_by().values_list("node", KT("data__waiting_for")).annotate(n=Count("pk")))
    return sorted((StuckGroup(node=node, reason=reason or "", count=n) for node, reason, n in rows),
                  key=lambda g: (g.node, g.reason))
