"""The `leadflow` command: a thin front over LeadFlow's Django management commands."""

from __future__ import annotations

import os
import sys

VERBS = {
    "up": "migrate, create a first workspace and admin if needed, serve web + API + worker",
    "web": "serve the web app and APIs only (production; any number of them)",
    "worker": "run the background worker only (production; any number of them on PostgreSQL)",
    "migrate": "bring the database schema up to date",
    "keys": "create, list and revoke API keys",
    "users": "create users and give them roles in workspaces",
    "workspaces": "create and list workspaces",
    "import": "import contacts or historical events from CSV",
    "process": "process every pending event now and exit",
    "scoring": "rescore contacts after rule changes (rescore [--backfill-days N]); train models",
    "journeys": "journeys as code: apply, export, lint, list and simulate journeys (YAML or JSON files)",
    "tick": "run everything due up to a simulated time (tick --until 90d): demos and tests",
    "demo": "set up the example journeys and their content in a workspace",
    "manage": "run any Django management command (advanced)",
}

USAGE = "usage: leadflow VERB [options]   (leadflow VERB --help for a verb's options)\n\nverbs:\n" + \
    "\n".join(f"  {verb:<11} {text}" for verb, text in VERBS.items()) + \
    "\n\nThe database is chosen by LEADFLOW_DATABASE_URL (default: SQLite in the data folder).\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(USAGE)
        return 0
    if argv[0] in {"--version", "version"}:
        from leadflow import __version__

        print(__version__)
        return 0
    verb = argv[0]
    if verb not in VERBS:
        sys.stderr.write(f"leadflow: unknown verb {verb!r}\n\n{USAGE}")
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadflow.settings")
    from leadflow import config

    try:
        config.parse_database_url(config.database_url())
    except config.ConfigError as exc:
        sys.stderr.write(f"leadflow: {exc}\n")
        return 2
    from django.core.management import execute_from_command_line

    if verb == "manage":
        execute_from_command_line(["leadflow", *argv[1:]])
        return 0
    command = {"import": "import_data", "keys": "keys", "users": "users"}.get(verb, verb)
    if verb == "scoring" and argv[1:2] in (["train"], ["models"]):
        command = "predictive"  # the rule-based scoring command keeps the other scoring actions
    execute_from_command_line(["leadflow", command, *argv[1:]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
