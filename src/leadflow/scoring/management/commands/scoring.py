"""`leadflow scoring rescore [--backfill-days N]`; other apps' verbs are handed to their commands.

Any `leadflow scoring VERB` that is not this module's own goes to the Django command `scoring_VERB`
if an app has one, or to the command listed in SUBCOMMAND_OF (`leadflow scoring train …` runs the
predictive app's `predictive train …`), so each app keeps its verbs in its own module.
"""

from __future__ import annotations

import datetime as dt

from django.core.management import get_commands, load_command_class
from django.core.management.base import BaseCommand, CommandError

from leadflow.core import clock
from leadflow.core.management.commands._common import workspace_arg
from leadflow.core.models import Workspace
from leadflow.scoring import selectors, services

OWN_VERBS = ("rescore",)
# Verbs another app's command implements as its own subcommand (the predictive app's `predictive`
# command has `train` and `models`): `leadflow scoring train …` runs `predictive train …`.
SUBCOMMAND_OF = {"train": "predictive", "models": "predictive"}


def _delegate(verb: str) -> tuple[str, list[str]] | None:
    """(command name, leading arguments) that implements `scoring VERB`, if any app has it."""
    commands = get_commands()
    if f"scoring_{verb}" in commands:
        return f"scoring_{verb}", []
    if SUBCOMMAND_OF.get(verb) in commands:
        return SUBCOMMAND_OF[verb], [verb]
    return None


class Command(BaseCommand):
    help = ("Scoring. rescore: recompute every contact's fit and engagement (after editing rules "
            "outside the app, or to apply engagement rules to past events with --backfill-days). "
            "Other verbs (train) come from the apps that own them.")

    def run_from_argv(self, argv):
        if len(argv) > 2 and argv[2] not in OWN_VERBS and not argv[2].startswith("-"):
            found = _delegate(argv[2])
            if found is not None:
                name, lead = found
                command = load_command_class(get_commands()[name], name)
                return command.run_from_argv([argv[0], name, *lead, *argv[3:]])
        return super().run_from_argv(argv)

    def add_arguments(self, parser):
        extra = sorted(verb for verb in {*SUBCOMMAND_OF, *(n.removeprefix("scoring_") for n in get_commands()
                                                           if n.startswith("scoring_"))} if _delegate(verb))
        sub = parser.add_subparsers(dest="action", required=True, metavar="{" + ",".join([*OWN_VERBS, *extra]) + "}",
                                    help="; ".join(f"{verb}: see leadflow scoring {verb} --help" for verb in extra) or None)
        rescore = sub.add_parser("rescore", help="recompute fit and engagement of every contact")
        rescore.add_argument("--workspace", help="workspace slug (default: every workspace)")
        rescore.add_argument("--backfill-days", type=int, default=0, metavar="N",
                             help="first rebuild the engagement ledger from the last N days of stored "
                                  "events under today's rules")

    def handle(self, *args, action, **options):
        workspaces = ([workspace_arg(options["workspace"])] if options.get("workspace")
                      else list(Workspace.objects.order_by("pk")))
        days = options["backfill_days"]
        if days < 0:
            raise CommandError("--backfill-days must be 0 or more")
        for workspace in workspaces:
            selectors.settings_get(workspace=workspace)
            if days:
                since = clock.now() - dt.timedelta(days=days)
                result = services.events_replay(workspace=workspace, since=since)
                self.stdout.write(
                    f"{workspace.slug}: replayed {result['events']} event{'' if result['events'] == 1 else 's'} since {since:%Y-%m-%d %H:%M} UTC, "
                    f"{result['entries_granted']} ledger entries (was {result['entries_removed']}), "
                    f"fit changed for {result['fit_changed']}, engagement for {result['engagement_changed']}")
            else:
                result = services.rules_rescore(workspace=workspace)
                self.stdout.write(f"{workspace.slug}: fit changed for {result['fit_changed']}, "
                                  f"engagement for {result['engagement_changed']} contacts")
