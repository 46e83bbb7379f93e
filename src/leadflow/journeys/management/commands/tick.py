"""`leadflow tick --until DATETIME|DURATION`: run everything due up to a simulated time (see
`leadflow.journeys.simulate.tick_run`), so a 90-day nurture can be run and shown in seconds."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from leadflow.core import clock
from leadflow.core.services import ServiceError
from leadflow.journeys.simulate import duration_parse, tick_run, tick_start


def _moment(text: str, *, start, option: str):
    try:
        return start + duration_parse(text)
    except ServiceError:
        pass
    try:
        return clock.parse_iso(text)
    except ValueError:
        raise CommandError(f"{option} {text!r}: give an ISO date-time (2026-06-01T09:00Z) or a duration "
                           "from the start (90d, 2w, 36h)") from None


class Command(BaseCommand):
    help = ("Run everything due up to a simulated time: events, journey steps, periodic passes, emails and "
            "webhooks, on a clock that jumps from one due moment to the next. Emails and webhooks really go "
            "out. For demos and tests: do not tick a database a worker serves in real time.")

    def add_arguments(self, parser):
        parser.add_argument("--until", required=True, metavar="DATETIME|DURATION",
                            help="where to stop: an ISO date-time, or a duration from the start such as 90d")
        parser.add_argument("--from", dest="start", metavar="DATETIME",
                            help="where to start (default: now, or where the last tick stopped if later)")
        parser.add_argument("--step", default="1d", metavar="DURATION",
                            help="stop at least this often for the periodic passes with no due time of their own "
                                 "(date triggers, score decay, segment time windows; default 1d)")

    def handle(self, *args, until, start=None, step="1d", verbosity=1, **options):
        try:
            begin = clock.parse_iso(start) if start else tick_start()
        except ValueError:
            raise CommandError(f"--from {start!r}: give an ISO date-time such as 2026-03-02T09:00Z") from None
        end = _moment(until, start=begin, option="--until")
        try:
            every = duration_parse(step)
        except ServiceError as exc:
            raise CommandError(f"--step: {exc}") from exc

        def told(moment, counts):
            done = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "timers")
            if verbosity >= 2 and done:
                self.stdout.write(f"{moment:%Y-%m-%d %H:%M:%S} UTC  {done}")

        try:
            report = tick_run(until=end, start=begin, step=every, on_moment=told)
        except ServiceError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"ticked from {report.start:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC in {report.moments} "
            f"stops: {report.events} events processed, {report.advanced} enrollment steps, {report.sent} emails "
            f"sent ({report.dispatched} dealt with by the dispatcher), {report.webhooks} webhook deliveries")
