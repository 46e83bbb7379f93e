"""Benchmark: the journey engine — enrollments due at a send step advanced per second.

On PostgreSQL: creates the database `leadflow_bench_journeys` on postgresql://postgres@127.0.0.1:5432/,
migrates it with `leadflow migrate`, makes one workspace, a template with an approved version and
one live journey applied with `journey_apply` (a manual trigger; `mail`, a send_email step, then
`wait`, a 30-day wait), and N contacts with an email address each (`INSERT … SELECT
generate_series`). Then, twice:

1. one worker: N enrollments written straight into `journeys_enrollment` (state active, at node
   `mail`, `resume` arrive, due a minute ago), and one worker process calls `journeys_advance()`
   until nothing is due;
2. two workers: N fresh enrollments (another entry key) the same way, and two worker processes
   advance them in parallel (`SELECT … FOR UPDATE SKIP LOCKED` splits the rows).

Each pass takes up to `--batch` due enrollments, queues their messages in the outbox (Message +
MessageEvent rows, nothing is dispatched: the figure excludes SMTP time), writes their history
and moves them on to the wait, in one transaction. Prints enrollments/s per worker and in total,
each worker's CPU per enrollment and its PostgreSQL backend's (from /proc), its RSS after the first pass and at the end (memory flat), the
load average; checks that every enrollment waits at `wait` with exactly one message and one
`sent` step, then drops the database.

Usage: python bench/journeys.py [--enrollments N] [--batch B] [--workers 1,2] [--profile] [--explain] [--keep]
  --profile   run the one-worker pass under cProfile and print the top functions
  --explain   print EXPLAIN (ANALYZE, BUFFERS) of the due query before the runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time

from benchlib import SERVER, admin, rss_mb, run_workers

DB = "leadflow_bench_journeys"
CHUNK = 250_000

JOURNEY = {
    "name": "Bench nurture", "slug": "bench-nurture", "triggers": [{"manual": True}], "reentry": "every_time",
    "nodes": [{"id": "mail", "type": "send_email", "template": "bench-welcome", "next": "wait"},
              {"id": "wait", "type": "wait", "days": 30}],
}


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def backend_cpu(pid: int) -> float | None:
    """CPU seconds used so far by a PostgreSQL backend process (None when it runs elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def django_setup(url: str) -> None:
    os.environ["LEADFLOW_DATABASE_URL"] = url
    os.environ.setdefault("LEADFLOW_DATA_DIR", tempfile.mkdtemp(prefix="leadflow-bench-journeys-"))
    os.environ.setdefault("LEADFLOW_SECRET_KEY", "bench-secret-key")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadflow.settings")
    os.environ["LEADFLOW_LOG_LEVEL"] = "WARNING"
    import django

    django.setup()


# --- setup (in this process) ----------------------------------------------------------------------

def prepare(contacts: int) -> dict:
    from django.db import connection, transaction

    from leadflow.core import clock
    from leadflow.core.services import workspace_create
    from leadflow.journeys.services import journey_apply
    from leadflow.messaging.models import Template, TemplateVersion

    now = clock.now()
    ws = workspace_create(name="Bench Journeys", slug="bench-journeys")
    template = Template.objects.create(workspace=ws, name="Welcome", slug="bench-welcome")
    version = TemplateVersion.objects.create(workspace=ws, template=template, number=1, subject="Welcome",
                                             html="<p>Hi {{ contact.first_name }}</p>", status="approved")
    template.approved_version = version
    template.save(update_fields=["approved_version"])
    journey, _, _ = journey_apply(workspace=ws, data=JOURNEY, actor="bench")
    for lo in range(1, contacts + 1, CHUNK):
        hi = min(lo + CHUNK - 1, contacts)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("""
                INSERT INTO contacts_contact (workspace_id, email, user_id, first_name, last_name, phone, title,
                    country, timezone, traits, trait_times, company_id, first_touch, latest_touch, source_channel,
                    fit_score, fit_grade, engagement_score, lifecycle_stage, created_at, updated_at)
                SELECT %(ws)s, 'person' || n || '@example.org', 'u' || n, 'First' || n, 'Last' || n, '', '', 'US',
                       '', jsonb_build_object('plan', (ARRAY['free','pro','enterprise'])[1 + n %% 3]), '{}'::jsonb,
                       NULL, '{}'::jsonb, '{}'::jsonb, 'organic_search', 0, '', 0, 'lead', %(now)s, %(now)s
                FROM generate_series(%(lo)s, %(hi)s) AS n""", {"ws": ws.pk, "now": now, "lo": lo, "hi": hi})
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE contacts_contact")
    return {"workspace": ws.pk, "journey": journey.pk, "version": journey.version_id}


def enrollments_insert(info: dict, entry_key: str) -> int:
    """One active enrollment per contact, due a minute ago at the send step."""
    from django.db import connection, transaction

    from leadflow.core import clock

    now = clock.now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO journeys_enrollment (workspace_id, journey_id, version_id, contact_id, node, state, due_at,
                wait_event, resume, "group", entry_key, steps, last_node, data, entered_at, updated_at, ended_at,
                end_reason)
            SELECT %(ws)s, %(journey)s, %(version)s, id, 'mail', 'active', %(due)s, '', 'arrive', '', %(key)s, 0,
                   '', '{}'::jsonb, %(now)s, %(now)s, NULL, ''
            FROM contacts_contact WHERE workspace_id = %(ws)s ORDER BY id""",
                       {"ws": info["workspace"], "journey": info["journey"], "version": info["version"],
                        "due": now - dt.timedelta(minutes=1), "now": now, "key": entry_key})
        count = cursor.rowcount
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE journeys_enrollment")
    return count


def explain_due(limit: int) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of the query a pass takes its batch with (rolled back)."""
    from django.db import connection, transaction

    from leadflow.core import clock
    from leadflow.journeys.models import Enrollment, EnrollmentState, JourneyStatus

    query = (Enrollment.objects.filter(state=EnrollmentState.ACTIVE, due_at__lte=clock.now())
             .filter(journey__status__in=[JourneyStatus.LIVE, JourneyStatus.ARCHIVED])
             .order_by("due_at", "id").select_for_update(skip_locked=True, of=("self",))[:limit])
    with transaction.atomic(), connection.cursor() as cursor:
        sql, params = query.query.sql_with_params()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        print("EXPLAIN ANALYZE of the due query:")
        for (line,) in cursor.fetchall():
            print("   ", line)
        transaction.set_rollback(True)


# --- a worker (its own process) -------------------------------------------------------------------

def worker_main(url: str, batch: int, profile: bool) -> None:
    django_setup(url)
    from django.db import connection

    from leadflow.core import clock
    from leadflow.journeys.engine import journeys_advance

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    state = {"done": 0, "passes": 0, "first_rss": None, "pass_seconds": []}

    def drain() -> None:
        while True:
            started = time.perf_counter()
            n = journeys_advance(now=clock.now(), limit=batch)
            if not n:
                break
            state["pass_seconds"].append(time.perf_counter() - started)
            state["done"] += n
            state["passes"] += 1
            if state["first_rss"] is None:
                state["first_rss"] = (rss_mb(), current_rss_mb())

    start, cpu_start, db_start = time.perf_counter(), time.process_time(), backend_cpu(backend)
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(drain)
        stats = pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative")
        stats.print_stats(40)
        stats.sort_stats("tottime").print_stats(30)
    else:
        drain()
    end, cpu = time.perf_counter(), time.process_time() - cpu_start
    db_end = backend_cpu(backend)
    db_cpu = db_end - db_start if db_start is not None and db_end is not None else None
    first = state["first_rss"] or (rss_mb(), current_rss_mb())
    seconds = sorted(state["pass_seconds"]) or [0.0]
    print(json.dumps({"done": state["done"], "passes": state["passes"], "start": start, "end": end,
                      "seconds": end - start, "cpu": cpu, "db_cpu": db_cpu, "rss_first": first[0], "rss_first_now": first[1],
                      "rss_end": rss_mb(), "rss_end_now": current_rss_mb(),
                      "pass_median_ms": seconds[len(seconds) // 2] * 1000,
                      "pass_max_ms": seconds[-1] * 1000}), flush=True)


def check(info: dict, entry_key: str, expected: int) -> list[str]:
    """Every enrollment of the run waits at `wait` with one message and one `sent` step."""
    from django.db import connection

    problems = []
    with connection.cursor() as cursor:
        cursor.execute("""SELECT count(*) FILTER (WHERE node = 'wait' AND state = 'active' AND resume = 'wait'
                                                  AND steps = 1), count(*)
                          FROM journeys_enrollment WHERE journey_id = %s AND entry_key = %s""",
                       [info["journey"], entry_key])
        waiting, total = cursor.fetchone()
        cursor.execute("""SELECT count(*), count(DISTINCT m.contact_id) FROM messaging_message m
                          JOIN journeys_enrollment e ON m.dedupe_key = 'journey:' || e.id || ':mail:0'
                          WHERE e.journey_id = %s AND e.entry_key = %s""", [info["journey"], entry_key])
        messages, people = cursor.fetchone()
        cursor.execute("""SELECT count(*), count(DISTINCT s.enrollment_id) FROM journeys_enrollmentstep s
                          JOIN journeys_enrollment e ON e.id = s.enrollment_id
                          WHERE e.journey_id = %s AND e.entry_key = %s AND s.kind = 'sent'""",
                       [info["journey"], entry_key])
        sent_steps, sent_people = cursor.fetchone()
    if not (waiting == total == expected):
        problems.append(f"{waiting:,} of {total:,} enrollments wait at `wait` (expected {expected:,})")
    if not (messages == people == expected):
        problems.append(f"{messages:,} messages for {people:,} people (expected {expected:,} each)")
    if not (sent_steps == sent_people == expected):
        problems.append(f"{sent_steps:,} sent steps for {sent_people:,} enrollments (expected {expected:,})")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enrollments", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=None, help="enrollments per pass (default: engine.BATCH)")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, in order (default 1,2)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.batch, args.profile)
        return 0

    url = f"{SERVER}/{DB}"
    admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin(f"CREATE DATABASE {DB}")
    try:
        env = {**os.environ, "LEADFLOW_DATABASE_URL": url}
        subprocess.run([sys.executable, "-m", "leadflow", "migrate", "-v", "0"], env=env, check=True)
        django_setup(url)
        from django.db import connection

        from leadflow.journeys import engine

        batch = args.batch or engine.BATCH
        t0 = time.perf_counter()
        info = prepare(args.enrollments)
        print(f"setup: workspace, template, journey, {args.enrollments:,} contacts in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        rows = []
        for run, workers in enumerate(int(w) for w in args.workers.split(",")):
            key = f"bench-{run}"
            t0 = time.perf_counter()
            made = enrollments_insert(info, key)
            print(f"run {run + 1}: {made:,} enrollments due at `mail` written in {time.perf_counter() - t0:.1f} s; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)
            if args.explain and run == 0:
                explain_due(batch)
            connection.close()
            load_before = os.getloadavg()[0]
            results = run_workers(__file__, ["--worker", url, "--batch", str(batch)], workers,
                                  first_args=["--profile"] if args.profile and workers == 1 else [])
            wall = max(r["end"] for r in results) - min(r["start"] for r in results)
            done = sum(r["done"] for r in results)
            rate = done / wall
            problems = check(info, key, made)
            for i, r in enumerate(results):
                print(f"  worker {i + 1}: {r['done']:,} in {r['passes']:,} passes, {r['seconds']:.1f} s = "
                      f"{r['done'] / r['seconds']:,.0f}/s; CPU {r['cpu']:.1f} s = "
                      f"{r['cpu'] / max(r['done'], 1) * 1e6:.0f} µs per enrollment"
                      + (f", its PostgreSQL backend {r['db_cpu'] / max(r['done'], 1) * 1e6:.0f} µs"
                         if r["db_cpu"] is not None else "") + "; pass median "
                      f"{r['pass_median_ms']:.0f} ms, max {r['pass_max_ms']:.0f} ms; RSS after the first pass "
                      f"{r['rss_first_now']:.0f} MB (peak {r['rss_first']:.0f}), at the end "
                      f"{r['rss_end_now']:.0f} MB (peak {r['rss_end']:.0f})", flush=True)
            print(f"{workers} worker{'s' if workers > 1 else ''}, batch {batch:,}: {done:,} enrollments advanced "
                  f"in {wall:.1f} s = {rate:,.0f}/s total, {rate / workers:,.0f}/s per worker; load average "
                  f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
                  + ("checks passed" if not problems else "CHECKS FAILED: " + "; ".join(problems)), flush=True)
            rows.append((workers, done, wall, rate, results, load_before))
        print()
        print("| workers | enrollments | seconds | enrollments/s total | per worker | RSS per worker after the "
              "first pass → end | load average |")
        print("|---|---|---|---|---|---|---|")
        for workers, done, wall, rate, results, load in rows:
            rss = ", ".join(f"{r['rss_first_now']:.0f} → {r['rss_end_now']:.0f} MB" for r in results)
            print(f"| {workers} | {done:,} | {wall:.1f} | {rate:,.0f} | {rate / workers:,.0f} | {rss} | {load:.2f} |")
        connection.close()
    finally:
        if not args.keep:
            admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
