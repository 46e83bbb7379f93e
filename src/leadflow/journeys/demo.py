"""The demo: LeadFlow's shipped example journeys (`examples/journeys/`) and everything they need,
set up in one workspace (`leadflow demo`), ready to watch with `leadflow tick`.

The folder holds one YAML file per journey and `content.yaml`: email settings, a layout, the
subscription topics, a lead magnet and the hosted forms the journeys start from, one scoring rule,
the segments and lists the journeys trigger on, the email templates and the stay-in-touch
streams. `demo_apply`

- creates the content that is missing and leaves what exists alone (a marketer's edits to a
  template, a topic or a segment survive running the demo again); the email settings are only
  filled in where blank;
- submits each new template and approves it as a workspace admin (marketing email needs the
  postal address and the unsubscribe link, which the layout carries);
- applies the streams and the journeys like `leadflow journeys apply` does: the files are the
  source, and applying an unchanged file changes nothing. Journeys that another one enrolls into
  or removes from are applied first, so every reference exists when the linter looks.

Everything happens in one transaction: a demo that fails half-way leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction

from leadflow.core.models import Membership, Role, Workspace
from leadflow.core.services import ServiceError

# The source checkout's examples (an editable install), else those of the folder LeadFlow is run
# from (`pip install .` in a checkout, then `leadflow demo` there).
EXAMPLES_DIRS = (Path(__file__).resolve().parents[3] / "examples" / "journeys", Path("examples") / "journeys")
CONTENT_FILE = "content.yaml"
SETTINGS_FIELDS = ("postal_address", "from_name", "from_email")


@dataclasses.dataclass
class DemoReport:
    """What a run did: the content it created, whether each stream changed, and each journey's
    version after applying (and whether that changed anything)."""

    created: list[str] = dataclasses.field(default_factory=list)  # "template retirement-thanks", …
    streams: list[tuple[str, bool]] = dataclasses.field(default_factory=list)  # (slug, changed)
    journeys: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)  # (slug, version, changed)


@dataclasses.dataclass
class Examples:
    content: dict
    journeys: list[tuple[str, dict]]  # (file name, definition), in the order they must be applied


def _load_yaml(path: Path) -> object:
    """A file read as `leadflow journeys apply` reads it (YAML 1.2 core scalars: a branch's `yes:`
    and `no:` stay keys, `10:00` and dates stay text)."""
    import yaml

    from leadflow.journeys.yamlio import yaml_load

    try:
        return yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ServiceError(f"{path.name}: not valid YAML: {exc}") from None


def _journey_refs(definition: dict) -> set[str]:
    """Slugs of the journeys a definition enrolls people into or removes them from."""
    return {node.get("journey") for node in definition.get("nodes") or []
            if isinstance(node, dict) and node.get("type") in ("enroll", "unenroll") and node.get("journey")}


def _dependency_order(journeys: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The journeys with every one another refers to before it (file order otherwise)."""
    by_slug = {data.get("slug"): (name, data) for name, data in journeys}
    ordered: list[tuple[str, dict]] = []
    state: dict[str, str] = {}

    def visit(name: str, data: dict) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            raise ServiceError(f"{name}: journeys enroll into each other in a cycle")
        state[name] = "visiting"
        for slug in sorted(_journey_refs(data)):
            if slug in by_slug:
                visit(*by_slug[slug])
        state[name] = "done"
        ordered.append((name, data))

    for name, data in journeys:
        visit(name, data)
    return ordered


def examples_load(*, folder: Path | None = None) -> Examples:
    """The example content and journeys from `folder` (default: the shipped examples)."""
    if folder is None:
        folder = next((d for d in EXAMPLES_DIRS if (d / CONTENT_FILE).is_file()), EXAMPLES_DIRS[0])
    folder = Path(folder)
    if not (folder / CONTENT_FILE).is_file():
        raise ServiceError(f"no example journeys at {folder} (they ship in examples/journeys of LeadFlow's "
                           "source; point --examples at that folder)")
    content = _load_yaml(folder / CONTENT_FILE)
    if not isinstance(content, dict):
        raise ServiceError(f"{CONTENT_FILE}: expected a mapping of settings, topics, templates, …")
    journeys = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name == CONTENT_FILE:
            continue
        data = _load_yaml(path)
        if not isinstance(data, dict) or not data.get("slug"):
            raise ServiceError(f"{path.name}: a journey definition with a `slug`")
        journeys.append((path.name, data))
    return Examples(content=content, journeys=_dependency_order(journeys))


def _approver(workspace: Workspace):
    """Who approves the demo's templates: the workspace's first admin, else a superuser."""
    membership = (Membership.objects.filter(workspace=workspace, role=Role.ADMIN).select_related("user")
                  .order_by("pk").first())
    if membership is not None:
        return membership.user
    user = get_user_model().objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
    if user is None:
        raise ServiceError(f"the demo approves its email templates as an admin of workspace {workspace.slug!r}, "
                           "and it has none: add one with `leadflow users create NAME --role admin`")
    return user


# --- content --------------------------------------------------------------------------------------

def _settings_fill(workspace: Workspace, wanted: dict, actor: str, report: DemoReport) -> None:
    from leadflow.messaging.sending import messaging_settings_get, messaging_settings_update

    current = messaging_settings_get(workspace_id=workspace.pk)
    blank = {key: wanted[key] for key in SETTINGS_FIELDS if wanted.get(key) and not getattr(current, key).strip()}
    if blank:
        messaging_settings_update(workspace_id=workspace.pk, actor=actor, **blank)
        report.created += [f"email setting {key}" for key in sorted(blank)]


def _layout(workspace: Workspace, spec: dict | None, actor: str, report: DemoReport):
    from leadflow.messaging import content
    from leadflow.messaging.models import Layout

    if not spec:
        return None
    found = Layout.objects.filter(workspace=workspace, slug=spec["slug"]).first()
    if found is not None:
        return found
    report.created.append(f"layout {spec['slug']}")
    return content.layout_create(workspace=workspace, name=spec["name"], html=spec["html"], text=spec.get("text", ""),
                                 slug=spec["slug"], actor=actor)


def _topics(workspace: Workspace, specs: list[dict], actor: str, report: DemoReport) -> None:
    from leadflow.consent.models import Topic
    from leadflow.consent.services import topic_create

    have = set(Topic.objects.filter(workspace=workspace).values_list("slug", flat=True))
    for spec in specs:
        if spec["slug"] not in have:
            topic_create(workspace_id=workspace.pk, name=spec["name"], slug=spec["slug"],
                         description=spec.get("description", ""), actor=actor)
            report.created.append(f"topic {spec['slug']}")


def _magnets_and_forms(workspace: Workspace, magnets: list[dict], forms: list[dict], report: DemoReport) -> None:
    from leadflow.tracking.forms import form_save, magnet_save
    from leadflow.tracking.models import Form, LeadMagnet

    have = set(LeadMagnet.objects.filter(workspace=workspace).values_list("slug", flat=True))
    for spec in magnets:
        if spec["slug"] not in have:
            magnet_save(workspace=workspace, slug=spec["slug"], name=spec["name"], kind=spec.get("kind", "ebook"),
                        delivery_url=spec["delivery_url"], description=spec.get("description", ""))
            report.created.append(f"lead magnet {spec['slug']}")
    have = set(Form.objects.filter(workspace=workspace).values_list("slug", flat=True))
    for spec in forms:
        if spec["slug"] not in have:
            attrs = {k: v for k, v in spec.items() if k not in ("slug", "name", "fields")}
            form_save(workspace=workspace, slug=spec["slug"], name=spec["name"], fields=spec["fields"], **attrs)
            report.created.append(f"form {spec['slug']}")


def _scoring_rules(workspace: Workspace, specs: list[dict], actor: str, report: DemoReport) -> None:
    from leadflow.scoring.models import ScoringRule
    from leadflow.scoring.services import rule_create

    for spec in specs:
        if ScoringRule.objects.filter(workspace=workspace, kind=spec["kind"], name=spec["name"]).exists():
            continue
        rule_create(workspace=workspace, kind=spec["kind"], name=spec["name"], condition=spec["condition"],
                    points=spec["points"], daily_cap=spec.get("daily_cap"),
                    expires_after_days=spec.get("expires_after_days"), actor=actor)
        report.created.append(f"scoring rule {spec['name']!r}")


def _segments(workspace: Workspace, specs: list[dict], actor: str, report: DemoReport) -> None:
    from leadflow.segments.models import Segment
    from leadflow.segments.services import segment_create

    for spec in specs:
        if Segment.objects.filter(workspace=workspace, slug=spec["slug"]).exists():
            continue
        definition = spec.get("definition")
        segment = segment_create(workspace=workspace, name=spec["name"], actor=actor,
                                 kind="dynamic" if definition is not None else "static", definition=definition)
        if segment.slug != spec["slug"]:  # the slug comes from the name; the journeys name the slug
            raise ServiceError(f"segment {spec['name']!r} got the slug {segment.slug!r}, not {spec['slug']!r}: "
                               "rename the segment that holds a similar name and run the demo again")
        report.created.append(f"segment {segment.slug}")


def _templates(workspace: Workspace, specs: list[dict], layout, approver, actor: str, report: DemoReport) -> None:
    """Create the missing templates and approve them; finish the approval of ones a failed run
    left unapproved."""
    from leadflow.messaging import content
    from leadflow.messaging.models import Template, VersionStatus

    existing = {t.slug: t for t in Template.objects.filter(workspace=workspace, slug__in=[s["slug"] for s in specs])}
    for spec in specs:
        template = existing.get(spec["slug"])
        if template is not None and template.approved_version_id is not None:
            continue
        if template is None:
            template = content.template_create(workspace=workspace, name=spec["name"], topic=spec.get("topic", ""),
                                               subject=spec["subject"], html=spec["html"], text=spec.get("text", ""),
                                               layout=layout, slug=spec["slug"], actor=actor)
            report.created.append(f"template {template.slug}")
        version = content.version_latest(template=template)
        if version.status == VersionStatus.DRAFT:
            version = content.version_submit(version=version, actor=actor)
        if version.status == VersionStatus.PENDING:
            content.version_approve(version=version, user=approver)
        else:
            raise ServiceError(f"template {template.slug!r} has no approved version and its latest is "
                               f"{version.get_status_display().lower()}: approve one in the app")


def _streams(workspace: Workspace, specs: list[dict], actor: str, report: DemoReport) -> None:
    from leadflow.journeys.streams import stream_apply

    for spec in specs:
        stream, changed = stream_apply(workspace=workspace, data=spec, actor=actor)
        report.streams.append((stream.slug, changed))


# --- the service ----------------------------------------------------------------------------------

def demo_apply(*, workspace: Workspace, actor: str, approver=None, folder: Path | None = None) -> DemoReport:
    """Set up the example journeys and their content in `workspace` (see the module docstring).
    `approver` approves the templates (default: the workspace's first admin). Running it again
    changes nothing unless the files changed."""
    from leadflow.journeys.services import journey_apply

    examples = examples_load(folder=folder)
    content = examples.content
    approver = approver or _approver(workspace)
    report = DemoReport()
    with transaction.atomic():
        _settings_fill(workspace, content.get("settings") or {}, actor, report)
        layout = _layout(workspace, content.get("layout"), actor, report)
        _topics(workspace, content.get("topics") or [], actor, report)
        _magnets_and_forms(workspace, content.get("lead_magnets") or [], content.get("forms") or [], report)
        _scoring_rules(workspace, content.get("scoring_rules") or [], actor, report)
        _segments(workspace, content.get("segments") or [], actor, report)
        _templates(workspace, content.get("templates") or [], layout, approver, actor, report)
        _streams(workspace, content.get("streams") or [], actor, report)
        for name, definition in examples.journeys:
            try:
                journey, version, changed = journey_apply(workspace=workspace, data=definition, actor=actor)
            except ServiceError as exc:
                raise ServiceError(f"{name}: {exc}") from None
            report.journeys.append((journey.slug, version.number, changed))
    return report
