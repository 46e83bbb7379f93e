from django.core.management.base import BaseCommand, CommandError

from leadflow.core.management.commands._common import workspace_arg
from leadflow.core.models import ApiKey, KeyKind
from leadflow.core.services import ServiceError, api_key_create, api_key_revoke


class Command(BaseCommand):
    help = ("Manage API keys: write keys ingest events (public: they sit in the tracking snippet), secret keys "
            "use the management API, hook keys authenticate the inbound email hooks (/hooks/email/…).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list,revoke}")
        create = sub.add_parser("create", help="create a key and print it alone on stdout")
        create.add_argument("--kind", choices=KeyKind.values, required=True,
                            help="write: events from sites and apps; secret: the management API; "
                                 "hook: bounce and complaint notifications (SES, Postmark, your MTA)")
        create.add_argument("--workspace", help="workspace slug (default: the first workspace)")
        create.add_argument("--name", default="", help="a label to recognise the key by")
        listing = sub.add_parser("list", help="list keys (prefixes only; keys are stored hashed)")
        listing.add_argument("--workspace", help="workspace slug (default: the first workspace)")
        revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
        revoke.add_argument("prefix", help="the first characters of the key, as `keys list` shows")
        revoke.add_argument("--workspace", help="workspace slug (default: the first workspace)")

    def handle(self, *args, action, workspace=None, **options):
        ws = workspace_arg(workspace)
        if action == "create":
            try:
                _, raw = api_key_create(workspace=ws, kind=options["kind"], name=options["name"], actor="cli")
            except ServiceError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(raw)
        elif action == "list":
            for key in ApiKey.objects.filter(workspace=ws).order_by("pk"):
                state = "revoked" if key.revoked_at else "active"
                self.stdout.write(f"{key.prefix}…  {key.kind:<6}  {state:<7}  {key.created_at:%Y-%m-%d}  {key.name}")
        else:
            matches = list(ApiKey.objects.filter(workspace=ws, prefix__startswith=options["prefix"][:10]))
            if len(matches) != 1:
                raise CommandError(f"{len(matches)} keys match {options['prefix']!r}; give a longer prefix")
            api_key_revoke(key=matches[0], actor="cli")
            self.stdout.write(f"revoked {matches[0].prefix}…")
