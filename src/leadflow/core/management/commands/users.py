import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from leadflow.core.management.commands._common import workspace_arg
from leadflow.core.models import Role
from leadflow.core.services import ServiceError, membership_set, user_create


class Command(BaseCommand):
    help = "Create users and set their role (admin, marketer, sales, analyst, compliance) per workspace."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{create,role}")
        create = sub.add_parser("create", help="create a user; prints the password if generated")
        create.add_argument("username")
        create.add_argument("--email", default="")
        create.add_argument("--password", help="default: a generated password, printed once")
        create.add_argument("--role", choices=Role.values, default=Role.MARKETER)
        create.add_argument("--workspace", help="workspace slug (default: the first workspace)")
        role = sub.add_parser("role", help="set a user's role in a workspace")
        role.add_argument("username")
        role.add_argument("role", choices=Role.values)
        role.add_argument("--workspace", help="workspace slug (default: the first workspace)")

    def handle(self, *args, action, username, workspace=None, **options):
        ws = workspace_arg(workspace)
        if action == "create":
            password = options.get("password") or secrets.token_urlsafe(12)
            try:
                user_create(username=username, password=password, email=options["email"],
                            workspace=ws, role=options["role"])
            except ServiceError as exc:
                raise CommandError(str(exc)) from exc
            if not options.get("password"):
                self.stdout.write(f"password: {password}")
        else:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user named {username!r}")
            membership_set(workspace=ws, user=user, role=options["role"])
