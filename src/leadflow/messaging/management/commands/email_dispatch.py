"""`leadflow manage email_dispatch`: send the email that is due now, outside the worker loop."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from leadflow.messaging.dispatch import dispatch_run, runtime


class Command(BaseCommand):
    help = "Send due email now (the worker does this on its own): one pass, or --until-empty."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=500, help="messages per pass (default 500)")
        parser.add_argument("--until-empty", action="store_true", help="repeat until a pass finds nothing due")

    def handle(self, *args, limit: int, until_empty: bool, **options):
        total = 0
        try:
            while True:
                done = dispatch_run(limit=limit)
                total += done
                if not until_empty or not done:
                    break
        finally:
            runtime().close()
        self.stdout.write(f"{total} message(s) dealt with (sent, deferred, blocked, failed or put to review)")
