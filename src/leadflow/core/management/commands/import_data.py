"""`leadflow import contacts|events FILE.csv`: CSV import through the contacts import service."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from leadflow.contacts.imports import ImportFileError, ImportReport, contacts_import, events_import
from leadflow.core.management.commands._common import workspace_arg

REJECTED_LISTED = 50


def _mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        column, sep, target = pair.rpartition("=")
        if not sep or not column.strip() or not target.strip():
            raise CommandError(f"--map {pair!r}: write it as \"CSV COLUMN=field\" "
                               "(field, trait:NAME, property:NAME or ignore)")
        mapping[column.strip()] = target.strip()
    return mapping


class _Bar:
    """A carriage-return progress bar on a terminal's stderr."""

    WIDTH = 30

    def __init__(self, stream):
        self.stream = stream
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // total if total else self.WIDTH
        percent = 100 * done // total if total else 100
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d}%  "
                          f"{done}/{total} rows", ending="")
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("")


class Command(BaseCommand):
    help = "Import contacts or historical events from a CSV file (comma, semicolon or tab separated)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="kind", required=True, metavar="{contacts,events}")
        contacts = sub.add_parser(
            "contacts", help="import contacts: one row per person",
            description="Columns email, user_id, first_name, last_name, phone, company, title, country "
                        "and timezone fill those fields; utm_* columns record the source; every other "
                        "column becomes a trait. A row needs an email or a user_id. Re-importing a "
                        "file updates the contacts instead of duplicating them.")
        contacts.add_argument("file", metavar="FILE.csv")
        contacts.add_argument("--source", default="", metavar="LABEL",
                              help="label of this import in the contacts' source (default: file name)")
        events = sub.add_parser(
            "events", help="import historical events: one row per event",
            description="Columns user_id or email, event and timestamp (ISO 8601, YYYY-MM-DD or "
                        "YYYYMMDD); every other column becomes an event property.")
        events.add_argument("file", metavar="FILE.csv")
        for command in (contacts, events):
            command.add_argument("--map", action="append", default=[], metavar="\"CSV COLUMN=field\"",
                                 help="map a column to a field, to trait:NAME / property:NAME, or to "
                                      "ignore (repeatable)")
            command.add_argument("--workspace", metavar="SLUG", help="workspace (default: the first)")

    def handle(self, *args, kind, file, map, workspace, **options):
        ws = workspace_arg(workspace)
        mapping = _mapping(map)
        bar = _Bar(self.stderr) if self.stderr.isatty() else None
        started = time.monotonic()
        try:
            if kind == "contacts":
                report = contacts_import(workspace=ws, file=file, source_label=options.get("source", ""),
                                         mapping=mapping, actor="cli", progress=bar)
            else:
                report = events_import(workspace=ws, file=file, mapping=mapping, actor="cli",
                                       progress=bar)
        except ImportFileError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar:
                bar.finish()
        self._summary(kind, report, time.monotonic() - started)
        if report.nothing_imported:
            raise CommandError("nothing was imported: the file has no data rows" if not report.rows
                               else f"nothing was imported: all {report.rows} rows were rejected")

    def _summary(self, kind: str, report: ImportReport, seconds: float) -> None:
        noun = "contacts" if kind == "contacts" else "events"
        self.stdout.write(f"{report.rows} rows read in {seconds:.1f}s")
        self.stdout.write(f"imported:   {report.imported} new {noun}")
        if kind == "contacts":
            self.stdout.write(f"updated:    {report.updated} existing contacts")
        self.stdout.write(f"unchanged:  {report.skipped_unchanged} (imported before)")
        self.stdout.write(f"duplicates: {report.duplicates} (folded into an earlier row)")
        self.stdout.write(f"rejected:   {report.rejected_count}")
        for rejected in report.rejected[:REJECTED_LISTED]:
            self.stdout.write(f"  row {rejected.row}: {rejected.reason}")
        if report.rejected_count > REJECTED_LISTED:
            self.stdout.write(f"  … and {report.rejected_count - REJECTED_LISTED} more rejected rows")
