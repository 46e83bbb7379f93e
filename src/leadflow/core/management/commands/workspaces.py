from django.core.management.base import BaseCommand, CommandError

from leadflow.core.models import Workspace
from leadflow.core.services import ServiceError, workspace_create


class Command(BaseCommand):
    help = "Create and list workspaces. Every row in LeadFlow belongs to one workspace."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,list}")
        create = sub.add_parser("create", help="create a workspace")
        create.add_argument("name")
        create.add_argument("--slug", help="short name used in URLs and commands")
        sub.add_parser("list", help="list workspaces")

    def handle(self, *args, action, **options):
        if action == "create":
            try:
                ws = workspace_create(name=options["name"], slug=options.get("slug"))
            except ServiceError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(ws.slug)
        else:
            for ws in Workspace.objects.order_by("slug"):
                self.stdout.write(f"{ws.slug}\t{ws.name}")
