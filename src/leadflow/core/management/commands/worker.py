from django.core.management.base import BaseCommand

from leadflow.core.pipeline import worker_loop


class Command(BaseCommand):
    help = ("Run the background worker: processes the event log into profiles. On PostgreSQL run as "
            "many as you like; they share the work through row locks.")

    def add_arguments(self, parser):
        parser.add_argument("--idle-sleep", type=float, default=0.2,
                            help="seconds to wait when there is nothing to do (default 0.2)")

    def handle(self, *args, idle_sleep, **options):
        worker_loop(idle_sleep=idle_sleep)
