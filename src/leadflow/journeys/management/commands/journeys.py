"""`leadflow journeys`: journeys as code. Apply YAML or JSON files (a file or a folder; stay-in-touch
stream files too), export journeys to files, lint a file or a journey, list the journeys, and
dry-run one person through a journey. See docs/journeys-as-code.md. `leadflow journeys webhooks`
lists, registers, rotates, disables and enables webhook endpoints (docs/journeys-webhooks.md)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Count, Q

from leadflow.journeys.yamlio import yaml_load_all
from leadflow.core import clock
from leadflow.core.management.commands._common import workspace_arg
from leadflow.core.services import ServiceError
from leadflow.journeys import language as lang
from leadflow.journeys.engine import version_definition
from leadflow.journeys.lint import ERROR, Finding, journey_lint
from leadflow.journeys.models import Journey, JourneyStatus, Stream
from leadflow.journeys.services import journey_apply, journey_export, journey_get_by_slug, journey_publish
from leadflow.journeys.streams import stream_apply

SUFFIXES = (".yaml", ".yml", ".json")
WORKSPACE_HELP = "workspace slug (default: the first workspace)"


@dataclasses.dataclass
class Source:
    """One journey definition read from a file: `label` names it in messages (`file.yaml`, or
    `file.yaml#2` for the second document of a file holding several)."""

    label: str
    data: object
    kind: str = "journey"  # or "stream": a stay-in-touch stream file (slug, name, items)


def _read(path: Path) -> list[object]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"{path}: cannot read it: {exc}") from None
    if path.suffix == ".json":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return yaml_load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise CommandError(f"{path}: not valid YAML: {where}{problem}") from None


def sources_load(target: str) -> tuple[list[Source], list[str]]:
    """The journey definitions and stream files in a file or a folder (its .yaml, .yml and .json
    files), and notes on the files of a folder skipped because they hold neither (such as the
    demo's content.yaml). A file with one journey and no `slug` takes its name from the file
    (ebook-nurture.yaml → ebook-nurture), so applying it again finds the same journey. A stream
    is an object with `items` and no `nodes` (see docs/journeys-streams.md)."""
    path = Path(target)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise CommandError(f"{path}: no .yaml, .yml or .json files in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise CommandError(f"{target}: no such file or folder")
    sources, skipped = [], []
    for file in files:
        docs = []
        for doc in _read(file):
            docs += doc if isinstance(doc, list) else [doc]
        kinds = [_kind(d) for d in docs]
        if path.is_dir() and not any(kinds):
            skipped.append(f"skipped {file.name}: neither a journey (`triggers`, `nodes`) nor a stream (`items`)")
            continue
        for i, (doc, kind) in enumerate(zip(docs, kinds)):
            label = file.name if len(docs) == 1 else f"{file.name}#{i + 1}"
            if kind != "stream" and isinstance(doc, dict) and not doc.get("slug") and len(docs) == 1:
                doc = {**doc, "slug": file.stem.lower()}
            sources.append(Source(label, doc, kind or "journey"))
    return sources, skipped


def _kind(doc: object) -> str | None:
    if not isinstance(doc, dict):
        return None
    if "nodes" in doc or "triggers" in doc:
        return "journey"
    return "stream" if "items" in doc else None


def _invalid(sources: list[Source]) -> list[str]:
    """Every source's first problem, as `label: path: message`."""
    problems, seen = [], {}
    for source in sources:
        if source.kind != "journey":
            continue
        try:
            definition = lang.journey_parse(source.data)
        except lang.JourneyError as exc:
            problems.append(f"{source.label}: {exc}")
            continue
        if definition.slug in seen:
            problems.append(f"{source.label}: slug: {definition.slug!r} is also the slug of {seen[definition.slug]}")
        seen[definition.slug] = source.label
    return problems


def _references(definition: lang.Definition) -> set[str]:
    return {n.journey for n in definition.nodes if isinstance(n, (lang.EnrollNode, lang.UnenrollNode))}


def _publish_order(applied: list[tuple]) -> list[tuple]:
    """Journeys another one enrolls into or removes from come first (so they are live when the
    linter looks); otherwise the order of the files."""
    by_slug = {item[1].slug: item for item in applied}
    done: list[tuple] = []
    placed: set[str] = set()

    def place(item, trail=()):
        slug = item[1].slug
        if slug in placed or slug in trail:
            return
        for ref in sorted(_references(item[3])):
            if ref in by_slug and ref != slug:
                place(by_slug[ref], (*trail, slug))
        placed.add(slug)
        done.append(item)

    for item in applied:
        place(item)
    return done


def _migrate_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise CommandError(f"--migrate {pair!r}: write it as OLD_NODE=NEW_NODE")
        out[old.strip()] = new.strip()
    return out


def _value(text: str):
    """A command-line value: JSON when it reads as JSON (numbers, true, null, lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"{what} {item!r}: write it as NAME=VALUE")
        out[key.strip()] = _value(value.strip())
    return out


def _event(text: str) -> tuple[str, str, dict]:
    """`WHEN:NAME` or `WHEN:NAME:key=value,key=value`, WHEN an offset from the start (0d, 2d, 36h)."""
    when, sep, rest = text.partition(":")
    name, _, props = rest.partition(":")
    if not sep or not when.strip() or not name.strip():
        raise CommandError(f"--event {text!r}: write it as WHEN:NAME, such as \"2d:Webinar Attended\"")
    properties = _pairs([p for p in props.split(",") if p.strip()], "--event property") if props else {}
    return when.strip(), name.strip(), properties


class Command(BaseCommand):
    help = ("Journeys as code: apply YAML or JSON files, export journeys to files, lint a file or a journey, "
            "list journeys, simulate one person's path. See docs/journeys-as-code.md.")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True,
                                    metavar="{apply,export,lint,list,simulate,webhooks}")
        apply = sub.add_parser("apply", help="create or update journeys (and their streams) from a file or a folder, "
                                               "and publish them")
        apply.add_argument("path", metavar="FILE_OR_DIR")
        apply.add_argument("--workspace", help=WORKSPACE_HELP)
        apply.add_argument("--no-publish", action="store_true",
                           help="save new versions as drafts; the published versions stay as they are")
        apply.add_argument("--migrate", nargs="+", default=[], metavar="OLD=NEW",
                           help="move the people waiting at node OLD of the published version to node NEW "
                                "(one journey at a time)")
        export = sub.add_parser("export", help="write journeys as files (the published, else latest, version)")
        export.add_argument("slug", nargs="?", help="one journey (default: all of them)")
        export.add_argument("--workspace", help=WORKSPACE_HELP)
        export.add_argument("--format", choices=["yaml", "json"], default="yaml")
        export.add_argument("--out", metavar="DIR", help="write SLUG.yaml (or .json) files here instead of printing")
        lint = sub.add_parser("lint", help="check a file, a folder or a journey; exit status 1 on errors")
        lint.add_argument("target", metavar="FILE|SLUG")
        lint.add_argument("--workspace", help=WORKSPACE_HELP)
        listing = sub.add_parser("list", help="list journeys with their status and people")
        listing.add_argument("--workspace", help=WORKSPACE_HELP)
        simulate = sub.add_parser("simulate", help="dry-run one person through a journey (nothing is sent or kept)")
        simulate.add_argument("target", metavar="SLUG|FILE")
        simulate.add_argument("--workspace", help=WORKSPACE_HELP)
        simulate.add_argument("--contact", help="a real contact (id, email or user id); default: a hypothetical one")
        simulate.add_argument("--traits", nargs="+", default=[], metavar="NAME=VALUE",
                              help="the person's traits (timezone=Europe/Paris, plan=pro…)")
        simulate.add_argument("--event", action="append", default=[], metavar="WHEN:NAME[:KEY=VALUE,…]",
                              help="an event and when it happens after the start, e.g. \"2d:Webinar Attended\"")
        simulate.add_argument("--days", type=float, default=90, help="how far to look (default 90)")
        simulate.add_argument("--start", help="when the simulation starts (ISO date-time; default now)")
        webhooks = sub.add_parser("webhooks", help="webhook endpoints: list, create, rotate a secret, disable, enable")
        hooks = webhooks.add_subparsers(dest="hook_action", required=True,
                                        metavar="{list,create,rotate,disable,enable}")
        hooks_list = hooks.add_parser("list", help="endpoints with their health and deliveries waiting")
        hooks_list.add_argument("--workspace", help=WORKSPACE_HELP)
        hooks_create = hooks.add_parser("create", help="register an endpoint and print its signing secret (once)")
        hooks_create.add_argument("name", metavar="NAME")
        hooks_create.add_argument("url", metavar="URL")
        hooks_create.add_argument("--slug", help="what journeys' webhook steps name (default: made from NAME)")
        hooks_create.add_argument("--secret", help="a whsec_… secret you already have (default: a new one)")
        hooks_create.add_argument("--workspace", help=WORKSPACE_HELP)
        hooks_rotate = hooks.add_parser("rotate", help="a new signing secret, printed once")
        hooks_rotate.add_argument("slug", metavar="SLUG")
        hooks_rotate.add_argument("--workspace", help=WORKSPACE_HELP)
        hooks_disable = hooks.add_parser("disable", help="stop delivering (waiting deliveries fail)")
        hooks_disable.add_argument("slug", metavar="SLUG")
        hooks_disable.add_argument("--reason", default="", help="shown with the endpoint")
        hooks_disable.add_argument("--workspace", help=WORKSPACE_HELP)
        hooks_enable = hooks.add_parser("enable", help="deliver again")
        hooks_enable.add_argument("slug", metavar="SLUG")
        hooks_enable.add_argument("--workspace", help=WORKSPACE_HELP)

    def handle(self, *args, action, workspace=None, **options):
        ws = workspace_arg(workspace)
        try:
            getattr(self, f"_{action}")(ws, **options)
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc

    # --- apply ---

    def _findings(self, findings: list[Finding]) -> None:
        for f in findings:
            self.stdout.write(f"    {f.level}: {f.path + ': ' if f.path else ''}{f.message} [{f.code}]")

    def _apply(self, ws, *, path, no_publish=False, migrate=(), **options):
        sources, skipped = sources_load(path)
        for note in skipped:
            self.stdout.write(note)
        problems = _invalid(sources)
        if problems:
            raise CommandError("nothing applied; invalid journey definitions:\n" + "\n".join(problems))
        streams = [src for src in sources if src.kind == "stream"]
        sources = [src for src in sources if src.kind == "journey"]
        moves = _migrate_map(migrate)
        if moves and len(sources) != 1:
            raise CommandError("--migrate maps the nodes of one journey: apply its file alone")
        tally = {"created": 0, "updated": 0, "unchanged": 0}
        refused = []
        with transaction.atomic():
            for source in streams:  # first: the journeys' stream nodes name them
                slug = source.data.get("slug")
                existed = bool(slug) and Stream.objects.filter(workspace=ws, slug=slug).exists()
                try:
                    stream, changed = stream_apply(workspace=ws, data=source.data, actor="cli")
                except ServiceError as exc:
                    raise CommandError(f"nothing applied; {source.label}: {exc}") from exc
                state = "created" if not existed else "updated" if changed else "unchanged"
                tally[state] += 1
                self.stdout.write(f"{state:<9} stream {stream.slug}  ({source.label})")
            applied = []
            for source in sources:
                definition = lang.journey_parse(source.data)
                existed = journey_get_by_slug(workspace=ws, slug=definition.slug) is not None
                journey, version, changed = journey_apply(workspace=ws, data=source.data, actor="cli",
                                                          publish=False, migrate=moves or None)
                applied.append((source, journey, version, version_definition(version), existed, changed))
            for source, journey, version, definition, existed, changed in _publish_order(applied):
                findings = journey_lint(workspace_id=ws.pk, definition=definition, journey=journey)
                errors = [f for f in findings if f.level == ERROR]
                publishing = not no_publish and journey.version_id != version.pk
                if publishing and errors:
                    refused.append(journey.slug)
                elif publishing:
                    journey = journey_publish(journey=journey, version=version, actor="cli")
                state = "created" if not existed else "updated" if changed or publishing else "unchanged"
                tally[state] += 1
                if publishing and errors:
                    where = "not published: fix the errors"
                elif journey.version_id == version.pk:
                    where = journey.status
                else:
                    where = "not published" + (f"; version {journey.version.number} stays {journey.status}"
                                               if journey.version else "")
                self.stdout.write(f"{state:<9} {journey.slug}  version {version.number}, {where}  ({source.label})")
                self._findings(findings)
            if refused:
                raise CommandError(f"nothing applied: {', '.join(refused)} "
                                   f"{'has' if len(refused) == 1 else 'have'} lint errors (above)")
        self.stdout.write(", ".join(f"{n} {state}" for state, n in tally.items()))

    # --- export ---

    def _export(self, ws, *, slug=None, format="yaml", out=None, **options):
        if slug:
            journey = journey_get_by_slug(workspace=ws, slug=slug)
            if journey is None:
                raise CommandError(f"there is no journey {slug!r} (see: leadflow journeys list)")
            journeys = [journey]
        else:
            journeys = list(Journey.objects.filter(workspace=ws).select_related("version").order_by("slug"))
        exported = []
        for journey in journeys:
            try:
                exported.append((journey.slug, journey_export(journey=journey)))
            except ServiceError as exc:
                if slug:
                    raise
                self.stderr.write(f"skipped {journey.slug}: {exc}")

        def text(data) -> str:
            if format == "json":
                return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)

        if out:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            for journey_slug, data in exported:
                file = folder / f"{journey_slug}.{'json' if format == 'json' else 'yaml'}"
                file.write_text(text(data), encoding="utf-8")
                self.stdout.write(f"wrote {file}")
        elif format == "json":
            self.stdout.write(text(exported[0][1] if slug else [data for _, data in exported]), ending="")
        else:
            self.stdout.write("---\n".join(text(data) for _, data in exported), ending="")

    # --- lint ---

    def _lint(self, ws, *, target, **options):
        if Path(target).exists():
            sources, skipped = sources_load(target)
            for note in skipped:
                self.stdout.write(note)
            checks = []
            for source in sources:
                if source.kind == "stream":
                    self.stdout.write(f"skipped {source.label}: a stream (`apply` checks it)")
                    continue
                slug = source.data.get("slug") if isinstance(source.data, dict) else None
                journey = journey_get_by_slug(workspace=ws, slug=slug) if slug else None
                checks.append((source.label, source.data, journey))
        else:
            journey = journey_get_by_slug(workspace=ws, slug=target)
            if journey is None:
                raise CommandError(f"{target}: no such file, and no journey with that slug "
                                   "(see: leadflow journeys list)")
            version = journey.versions.order_by("-number").first()
            if version is None:
                raise CommandError(f"journey {target!r} has no version")
            checks = [(f"{journey.slug} (version {version.number})", version_definition(version), journey)]
        errors = warnings = 0
        for label, definition, journey in checks:
            findings = journey_lint(workspace_id=ws.pk, definition=definition, journey=journey)
            errors += sum(f.level == ERROR for f in findings)
            warnings += sum(f.level != ERROR for f in findings)
            self.stdout.write(f"{label}: " + ("no problems found" if not findings else
                                               f"{len(findings)} finding{'s' if len(findings) > 1 else ''}"))
            self._findings(findings)
        if errors:
            raise CommandError(f"{errors} error{'s' if errors > 1 else ''}, {warnings} "
                               f"warning{'s' if warnings != 1 else ''}")

    # --- list ---

    def _list(self, ws, **options):
        journeys = (Journey.objects.filter(workspace=ws).select_related("version")
                    .annotate(active=Count("enrollments", filter=Q(enrollments__state="active")))
                    .order_by("slug"))
        rows = [("SLUG", "STATUS", "VERSION", "IN NOW", "LAST ENTRY", "NAME")]
        for j in journeys:
            status = j.status
            if j.status == JourneyStatus.PAUSED and j.paused_reason:
                status += f" ({j.paused_reason})"
            rows.append((j.slug, status, str(j.version.number) if j.version else "-", str(j.active),
                         f"{j.last_entry_at:%Y-%m-%d}" if j.last_entry_at else "never", j.name))
        if len(rows) == 1:
            self.stdout.write("no journeys yet: apply one with `leadflow journeys apply FILE`")
            return
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5])

    # --- simulate ---

    def _contact(self, ws, ref: str):
        from leadflow.contacts.models import Contact

        query = Q(email__iexact=ref) | Q(user_id=ref)
        if ref.isdigit():
            query |= Q(pk=int(ref))
        found = list(Contact.objects.filter(query, workspace=ws)[:2])
        if len(found) != 1:
            raise CommandError(f"--contact {ref!r}: {'no contact' if not found else 'several contacts'} "
                               "with that id, email or user id")
        return found[0]

    def _simulate(self, ws, *, target, contact=None, traits=(), event=(), days=90, start=None, **options):
        from leadflow.journeys.simulate import journey_simulate

        if Path(target).exists():
            sources = [src for src in sources_load(target)[0] if src.kind == "journey"]
            if len(sources) != 1:
                raise CommandError(f"{target}: simulate one journey at a time ({len(sources)} found)")
            subject = lang.journey_parse(sources[0].data)
        else:
            subject = target
        person = self._contact(ws, contact) if contact else None
        given = _pairs(traits, "--traits")
        when = None
        if start:
            try:
                when = clock.parse_iso(start)
            except ValueError:
                raise CommandError(f"--start {start!r}: give an ISO date-time such as 2026-03-02T09:00Z") from None
        timeline = journey_simulate(journey_or_definition=subject, workspace=ws, contact=person,
                                    traits=given or None, events=[_event(e) for e in event], start=when, days=days)
        zone_name = given.get("timezone") or (person.timezone if person else "") or "UTC"
        try:
            zone = ZoneInfo(str(zone_name))
        except (KeyError, ValueError):
            zone = ZoneInfo("UTC")
        begin = when or (timeline[0]["at"] if timeline else clock.now())
        who = f"contact {person.pk}" if person else "a hypothetical person"
        self.stdout.write(f"{who}, from {begin.astimezone(zone):%Y-%m-%d %H:%M %Z} for {days:g} days "
                          "(a dry run: nothing is sent or kept)")
        for row in timeline:
            self.stdout.write(_timeline_line(row, begin, zone))
        emails = sum(1 for row in timeline if row["kind"] == "sent")
        self.stdout.write(f"{emails} email{'s' if emails != 1 else ''}")


    # --- webhooks ---

    def _webhooks(self, ws, *, hook_action, slug=None, **options):
        from leadflow.journeys import webhooks

        if hook_action == "list":
            return self._webhooks_list(ws)
        if hook_action == "create":
            endpoint = webhooks.webhook_endpoint_create(workspace=ws, name=options["name"], url=options["url"],
                                                        slug=slug, secret=options.get("secret"),
                                                        actor="cli")
            self.stdout.write(f"created {endpoint.slug}  {webhooks.url_shown(endpoint.url)}")
            self.stdout.write(f"secret  {endpoint.secret}  (shown once: give it to the receiver)")
            return
        endpoint = webhooks.webhook_endpoint_get_by_slug(workspace=ws, slug=slug)
        if endpoint is None:
            raise CommandError(f"there is no webhook endpoint {slug!r} (see: leadflow journeys webhooks list)")
        if hook_action == "rotate":
            endpoint = webhooks.webhook_endpoint_rotate_secret(endpoint=endpoint, actor="cli")
            self.stdout.write(f"rotated {endpoint.slug}")
            self.stdout.write(f"secret  {endpoint.secret}  (shown once: give it to the receiver)")
        elif hook_action == "disable":
            was = endpoint.disabled_at
            endpoint = webhooks.webhook_endpoint_disable(endpoint=endpoint, actor="cli",
                                                         reason=options.get("reason", "").strip()
                                                         or webhooks.DISABLED_BY_HAND)
            self.stdout.write(f"{endpoint.slug} was already disabled ({endpoint.disabled_reason})" if was else
                              f"disabled {endpoint.slug}: its waiting deliveries failed, journey steps that call "
                              "it fail until it is enabled")
        else:
            was = endpoint.disabled_at
            endpoint = webhooks.webhook_endpoint_enable(endpoint=endpoint, actor="cli")
            self.stdout.write(f"enabled {endpoint.slug}" if was else f"{endpoint.slug} was not disabled")

    def _webhooks_list(self, ws):
        from leadflow.journeys import webhooks

        endpoints = list(webhooks.webhook_endpoints_list(workspace=ws))
        if not endpoints:
            self.stdout.write("no webhook endpoints yet: leadflow journeys webhooks create NAME URL")
            return
        waiting = webhooks.webhook_endpoints_waiting(endpoints=endpoints)
        rows = [("SLUG", "HEALTH", "WAITING", "URL", "NAME")]
        for e in endpoints:
            health = webhooks.webhook_endpoint_health(endpoint=e)
            if e.disabled_reason:
                health += f" ({e.disabled_reason})"
            rows.append((e.slug, health, str(waiting.get(e.pk, 0)), webhooks.url_shown(e.url), e.name))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            self.stdout.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def _timeline_line(row: dict, begin: dt.datetime, zone) -> str:
    at = row["at"].astimezone(zone)
    day = (row["at"] - begin).total_seconds() / 86400
    detail = row.get("detail") or {}
    kind = row["kind"]
    if kind == "event":
        props = ", ".join(f"{k}={v}" for k, v in row["properties"].items())
        what = f"{row['event']}" + (f" ({props})" if props else "")
    elif kind == "sent":
        what = f"{row['node']}: “{row['email']['subject']}” ({row['email']['template']})"
    elif kind in ("converted", "exited"):
        what = f"{row['node']}: {detail.get('goal') or detail.get('reason') or ''}".rstrip(": ")
    elif kind == "horizon":
        due = detail.get("due_at")
        what = f"still at {row['node']}" + (f", due {due.astimezone(zone):%Y-%m-%d %H:%M}" if due else "")
    elif kind == "not_entered":
        what = detail.get("reason", "")
    else:
        outcome = detail.get("outcome") or detail.get("reason") or ""
        what = row.get("node", "") + (f" → {outcome}" if outcome else "")
    return f"{at:%Y-%m-%d %a %H:%M}  day {day:5.1f}  {kind:<11} {what}"
