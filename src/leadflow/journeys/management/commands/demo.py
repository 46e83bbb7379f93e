"""`leadflow demo [--workspace SLUG] [--examples DIR]`: set up the shipped example journeys and their
content in a workspace (see `leadflow.journeys.demo`)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from leadflow.core.management.commands._common import workspace_arg
from leadflow.core.services import ServiceError
from leadflow.journeys.demo import EXAMPLES_DIRS, demo_apply


class Command(BaseCommand):
    help = ("Set up the example journeys (ebook nurture, webinar, stay in touch, pricing accelerator, "
            "re-engagement, recycled leads, client onboarding) with their templates, topics, segments and "
            "streams. Creates only what is missing; running it again changes nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--workspace", help="workspace slug (default: the first workspace)")
        parser.add_argument("--examples", metavar="DIR", help=f"the examples folder (default: {EXAMPLES_DIRS[0]}, else ./examples/journeys)")

    def handle(self, *args, workspace=None, examples=None, **options):
        ws = workspace_arg(workspace)
        try:
            report = demo_apply(workspace=ws, actor="cli:demo", folder=examples)
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        for line in report.created:
            self.stdout.write(f"created {line}")
        for slug, changed in report.streams:
            self.stdout.write(f"stream {slug}: " + ("applied" if changed else "unchanged"))
        for slug, number, changed in report.journeys:
            self.stdout.write(f"journey {slug}: version {number}" + ("" if changed else " (unchanged)"))
        self.stdout.write(f"demo ready in workspace {ws.slug!r}: move the clock with `leadflow tick --until …` "
                          "or let the worker run")
