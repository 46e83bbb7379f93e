from django.core.management.base import BaseCommand

from leadflow.core.management.commands._serve import add_server_arguments, serve


class Command(BaseCommand):
    help = "Serve the LeadFlow web app, tracking API and management API (no background worker)."

    def add_arguments(self, parser):
        add_server_arguments(parser)

    def handle(self, *args, host, port, workers, threads, **options):
        serve(host=host, port=port, workers=workers, threads=threads)
