import os
import subprocess
import sys

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from leadflow.core.management.commands._serve import add_server_arguments, serve
from leadflow.core.services import bootstrap


class Command(BaseCommand):
    help = ("Start LeadFlow on one machine: migrate the database, create a first workspace and "
            "admin user if none exist, then serve the web app, the APIs and the background worker. "
            "Ctrl-C stops everything.")

    def add_arguments(self, parser):
        add_server_arguments(parser)
        parser.add_argument("--admin-username", default="admin",
                            help="username of the first admin, if one is created (default admin)")

    def handle(self, *args, host, port, workers, threads, admin_username, **options):
        call_command("migrate", interactive=False, verbosity=0)
        created = bootstrap(admin_username=admin_username)
        workspace = created["workspace_existing"]
        url = f"http://{host}:{port}/"
        if not os.environ.get("LEADFLOW_PUBLIC_URL"):
            # Email carries absolute links (tracking, unsubscribe, downloads): on a laptop, this server.
            os.environ["LEADFLOW_PUBLIC_URL"] = settings.PUBLIC_URL = url.rstrip("/")
        out = self.stdout
        out.write(f"LeadFlow is starting on {url}")
        out.write(f"  database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]} "
                  f"{settings.DATABASES['default']['NAME']}")
        if "admin" in created:
            username, password = created["admin"]
            out.write(f"  admin login: {username} / {password}   (shown once: keep it)")
        if "write_key" in created:
            out.write(f"  write key for workspace '{workspace.slug}': {created['write_key']}   (shown once)")
        out.write(f"  tracking API: {url}v1/batch    management API docs: {url}api/docs")
        out.write(f"  links in email point to {settings.PUBLIC_URL}/ (LEADFLOW_PUBLIC_URL)")
        out.write("  press Ctrl-C to stop")
        self.stdout.flush()
        worker = subprocess.Popen([sys.executable, "-m", "leadflow", "worker"], env=os.environ.copy())
        try:
            serve(host=host, port=port, workers=workers, threads=threads)
        except KeyboardInterrupt:
            pass
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
            out.write("LeadFlow stopped")
