"""Benchmark: evaluating a five-condition behavioural segment over 1,000,000 contacts and 20,000,000 events.

On PostgreSQL: creates the database `leadflow_bench_segments` on postgresql://postgres@127.0.0.1:5432/,
migrates it with `leadflow migrate`, generates one workspace with companies (industry, employees),
contacts (engagement score, lifecycle stage) and an event log spread over 90 days (page views,
some of /pricing; "Asset Downloaded" with magnet slugs incl. pricing-guide; forms, emails, product
events), every event with contact_id and processed_at set as the worker leaves them, all with
INSERT … SELECT generate_series in chunks, then ANALYZE. Then times, in this process, the segment
"SaaS companies with 50-500 employees, engagement over 40, downloaded the pricing guide in the last
30 days, visited the pricing page at least 3 times, not customers":

1. full evaluation: `Contact.objects.filter(workspace).filter(per_row(filter_q(...)))` `.count()` and the id
   list (what the membership full evaluation reads); EXPLAIN ANALYZE printed if over target;
2. `segment_preview` (count and a sample of 20), several runs, and the median;
4. `segment_create` of the dynamic segment (first full evaluation with membership writes), with the
   time its queries took by step (the evaluation, the locked re-check, member/change rows, events);
3. incremental: 1,000 new events for ~1,000 random contacts, then the pipeline's segments stage
   `leadflow.segments.processing.process_events(events)` in a transaction (several rounds).

Every figure is printed with the machine's 1-minute load average at its start (other jobs share
the cores). Prints the figures and peak RSS, then drops the database.
Usage: python bench/segments.py [--contacts N] [--events M] [--rounds R] [--previews P] [--explain] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import SERVER, admin, rss_mb

DB = "leadflow_bench_segments"
CHUNK = 1_000_000

DEFINITION = {"version": 1, "all": [
    {"field": "company.traits.industry", "op": "eq", "value": "SaaS"},
    {"field": "company.traits.employees", "op": "between", "value": [50, 500]},
    {"field": "engagement_score", "op": "gt", "value": 40},
    {"magnet_downloaded": "pricing-guide", "within_days": 30},
    {"visited": "/pricing*", "count": {"op": "gte", "value": 3}},
    {"not": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}},
]}

# The event mix, by a bucket 0..99 drawn per row:
#   0-54 page view (10 of 55 on /pricing), 55-59 Asset Downloaded (1 in 4 the pricing guide),
#   60-62 Form Submitted, 63-69 Email Clicked, 70-84 Email Delivered, 85-99 product events.
EVENT_SQL = """
    INSERT INTO tracking_event (workspace_id, message_id, type, event, anonymous_id, user_id, group_id,
        previous_id, properties, traits, context, integrations, timestamp, original_timestamp, sent_at,
        received_at, shard, contact_id, processed_at, error)
    SELECT %(ws)s, %(prefix)s || n, CASE WHEN b < 55 THEN 'page' ELSE 'track' END,
           CASE WHEN b < 55 THEN ''
                WHEN b < 60 THEN 'Asset Downloaded'
                WHEN b < 63 THEN 'Form Submitted'
                WHEN b < 70 THEN 'Email Clicked'
                WHEN b < 85 THEN 'Email Delivered'
                ELSE (ARRAY['Feature Used','Signed In','Report Exported'])[1 + n %% 3] END,
           'anon-' || c, 'u' || (c - %(first)s + 1), '', '',
           CASE WHEN b < 55 THEN jsonb_build_object('path', p, 'url', 'https://www.example.com' || p,
                                                    'title', 'Page ' || p)
                WHEN b < 60 THEN jsonb_build_object('magnet_slug',
                     (ARRAY['pricing-guide','state-of-saas-2026','roi-calculator','onboarding-checklist'])[1 + n %% 4])
                WHEN b < 63 THEN jsonb_build_object('form_slug', (ARRAY['demo-request','newsletter','contact-us'])[1 + n %% 3])
                WHEN b < 85 THEN jsonb_build_object('campaign', 'nurture-' || (n %% 12))
                ELSE jsonb_build_object('feature', 'f' || (n %% 30)) END,
           '{}'::jsonb,
           CASE WHEN b < 55 THEN jsonb_build_object('page', jsonb_build_object('path', p,
                                     'url', 'https://www.example.com' || p), 'ip', '203.0.113.7')
                ELSE jsonb_build_object('ip', '203.0.113.7') END,
           '{}'::jsonb, ts, ts, ts, ts, (c %% 16)::smallint, c, ts, ''
    FROM (SELECT n, b, c, ts,
                 CASE WHEN b < 10 THEN (ARRAY['/pricing','/pricing','/pricing/enterprise'])[1 + n %% 3]
                      ELSE (ARRAY['/','/blog/lead-scoring','/blog/segments','/docs/api','/features',
                                  '/about','/customers','/blog/attribution'])[1 + n %% 8] END AS p
          FROM (SELECT n, (n * 37 + floor(random() * 100)::int) %% 100 AS b,
                       -- skewed: a minority of contacts are very active
                       %(first)s + floor(power(random(), 2.5) * %(contacts)s)::bigint AS c,
                       %(now)s - random() * interval '90 days' AS ts
                FROM generate_series(%(lo)s, %(hi)s) AS n) AS g) AS r
"""


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


class QueryTimes:
    """An execute wrapper adding up the time of each statement by the step of `segment_create` it
    belongs to (told apart by the statement's text)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @staticmethod
    def step(sql: str) -> str:
        if sql.startswith("SELECT DISTINCT"):
            return "re-check of the changed contacts, locked" if '"id" IN (' in sql else "evaluation"
        if "FOR UPDATE" in sql:
            return "locking the changed contacts"
        if '"tracking_event"' in sql:
            return "Segment Entered events"
        if '"segments_segmentmember"' in sql or '"segments_segmentchange"' in sql:
            return "member and change rows"
        return "other statements"

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            step = self.step(sql)
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started


def generate(cursor, workspace_id: int, contacts: int, now: dt.datetime) -> int:
    companies = max(contacts // 20, 1)
    cursor.execute("""
        INSERT INTO contacts_company (workspace_id, name, domain, traits, created_at, updated_at)
        SELECT %(ws)s, 'Company ' || n, 'company' || n || '.example',
               jsonb_build_object('employees', (ARRAY[5, 12, 30, 60, 120, 250, 480, 900, 2500, 10000])[1 + (n * 7) %% 10]
                                               + (n %% 7),
                                  'industry', (ARRAY['Software','Retail','Manufacturing','SaaS','Education',
                                                     'SaaS','Finance','Healthcare'])[1 + n %% 8]),
               %(now)s, %(now)s
        FROM generate_series(1, %(n)s) AS n""", {"ws": workspace_id, "now": now, "n": companies})
    cursor.execute("SELECT MIN(id) FROM contacts_company WHERE workspace_id = %s", [workspace_id])
    first_company = cursor.fetchone()[0]
    cursor.execute("""
        INSERT INTO contacts_contact (workspace_id, email, user_id, first_name, last_name, phone, title, country,
            timezone, traits, trait_times, company_id, first_touch, latest_touch, source_channel, fit_score,
            fit_grade, engagement_score, lifecycle_stage, created_at, updated_at)
        SELECT %(ws)s, 'person' || n || '@company' || (n %% %(companies)s + 1) || '.example',
               'u' || n, 'First' || n, 'Last' || n, '',
               (ARRAY['Marketing Director','Software Engineer','VP Sales','Product Manager','CEO'])[1 + (n * 7) %% 5],
               (ARRAY['US','DE','GB','FR','NZ','IN','BR'])[1 + n %% 7], '',
               jsonb_build_object('plan', (ARRAY['free','pro','enterprise'])[1 + n %% 3]),
               '{}'::jsonb, %(first_company)s + (n %% %(companies)s), '{}'::jsonb, '{}'::jsonb, 'organic_search',
               0, '', round((random() * random() * 100)::numeric, 1)::float8,
               (ARRAY['subscriber','lead','lead','marketing_qualified','sales_qualified','opportunity',
                      'customer','customer',''])[1 + floor(random() * 9)::int],
               %(now)s - random() * interval '365 days', %(now)s
        FROM generate_series(1, %(n)s) AS n""",
                   {"ws": workspace_id, "now": now, "n": contacts, "companies": companies,
                    "first_company": first_company})
    cursor.execute("SELECT MIN(id) FROM contacts_contact WHERE workspace_id = %s", [workspace_id])
    first_contact = cursor.fetchone()[0]
    return first_contact


def events_insert(cursor, *, workspace_id: int, first_contact: int, contacts: int, lo: int, hi: int,
                  now: dt.datetime, prefix: str = "bench-") -> None:
    cursor.execute(EVENT_SQL, {"ws": workspace_id, "first": first_contact, "contacts": contacts,
                               "now": now, "lo": lo, "hi": hi, "prefix": prefix})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000_000)
    parser.add_argument("--rounds", type=int, default=5, help="incremental rounds of 1,000 events")
    parser.add_argument("--previews", type=int, default=5, help="preview runs (the median is reported)")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE even if on target")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--reuse", action="store_true",
                        help="measure on the database a previous --keep run left (skips generation)")
    args = parser.parse_args()
    if args.reuse:
        args.keep = True
    else:
        admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        admin(f"CREATE DATABASE {DB}")
    data_dir = tempfile.mkdtemp(prefix="leadflow-bench-segments-")
    env = {**os.environ, "LEADFLOW_DATABASE_URL": f"{SERVER}/{DB}", "LEADFLOW_DATA_DIR": data_dir,
           "DJANGO_SETTINGS_MODULE": "leadflow.settings"}
    results: list[tuple[str, str]] = []
    try:
        subprocess.run([sys.executable, "-m", "leadflow", "migrate", "-v", "0"], env=env, check=True)
        os.environ.update(env)
        import django

        django.setup()
        from django.db import connection, transaction

        from leadflow.contacts.models import Contact
        from leadflow.core import clock
        from leadflow.core.services import workspace_create
        from leadflow.segments import processing
        from leadflow.segments.compiler import filter_q, per_row
        from leadflow.segments.language import filter_parse
        from leadflow.segments.models import SegmentChange, SegmentMember
        from leadflow.segments.preview import segment_preview
        from leadflow.segments.services import segment_create
        from leadflow.tracking.models import Event

        from leadflow.core.models import Workspace
        from leadflow.segments.models import Segment

        now = clock.now()
        if args.reuse:
            # What an earlier run added: its segments with their Segment Entered/Exited events
            # and the incremental rounds' events, found by message id through the unique index
            # (a `LIKE 'incr-%'` would read the whole 10 GB table).
            workspace = Workspace.objects.get(slug="bench")
            added = [f"lf-segment-{pk}" for pk in SegmentChange.objects.filter(workspace=workspace)
                     .values_list("pk", flat=True)]
            added += [f"incr-{r}-{k}" for r in range(100) for k in range(1, 1001)]
            for start in range(0, len(added), 5000):
                Event.objects.filter(workspace=workspace, message_id__in=added[start:start + 5000])._raw_delete(
                    Event.objects.db)
            Segment.objects.filter(workspace=workspace).delete()
            first_contact = Contact.objects.filter(workspace=workspace).order_by("pk").values_list(
                "pk", flat=True).first()
            args.contacts = Contact.objects.filter(workspace=workspace).count()
            print(f"reusing {DB}: {args.contacts:,} contacts", flush=True)
        else:
            workspace = workspace_create(name="Bench", slug="bench")
        started = time.perf_counter()
        if not args.reuse:
            with transaction.atomic(), connection.cursor() as cursor:
                first_contact = generate(cursor, workspace.pk, args.contacts, now)
            print(f"generated {args.contacts:,} contacts in {time.perf_counter() - started:.1f} s", flush=True)
        ev_started = time.perf_counter()
        for lo in range(1, 0 if args.reuse else args.events + 1, CHUNK):
            hi = min(lo + CHUNK - 1, args.events)
            with transaction.atomic(), connection.cursor() as cursor:
                events_insert(cursor, workspace_id=workspace.pk, first_contact=first_contact,
                              contacts=args.contacts, lo=lo, hi=hi, now=now)
            elapsed = time.perf_counter() - ev_started
            print(f"  events {hi:,}/{args.events:,} ({elapsed:.0f} s, {hi / elapsed:,.0f} rows/s)", flush=True)
        with connection.cursor() as cursor:
            if not args.reuse:
                for table in ("contacts_company", "contacts_contact", "tracking_event"):
                    cursor.execute(f"VACUUM ANALYZE {table}")
            cursor.execute("SELECT pg_size_pretty(pg_total_relation_size('tracking_event')), "
                           "(SELECT reltuples::bigint FROM pg_class WHERE relname = 'tracking_event')")
            size, rows = cursor.fetchone()
            args.events = rows if args.reuse else args.events
        gen_seconds = time.perf_counter() - started
        print(f"generated {args.contacts:,} contacts and {args.events:,} events (tracking_event {size}) in "
              f"{gen_seconds:.0f} s; peak RSS {rss_mb():.0f} MB", flush=True)
        if not args.reuse:
            results.append((f"generate {args.contacts:,} contacts + {args.events:,} events, VACUUM ANALYZE",
                            f"{gen_seconds:.0f} s"))

        # (1) full evaluation: count, and the id list.
        flt = filter_parse(DEFINITION, workspace_id=workspace.pk)
        now = clock.now()
        matching = Contact.objects.filter(workspace_id=workspace.pk).filter(
            per_row(filter_q(flt, workspace_id=workspace.pk, now=now)))  # as membership evaluates it
        count_load = load()
        started = time.perf_counter()
        count = matching.count()
        count_seconds = time.perf_counter() - started
        ids_load = load()
        started = time.perf_counter()
        ids = list(matching.values_list("pk", flat=True).distinct())
        ids_seconds = time.perf_counter() - started
        print(f"(1) full evaluation: count {count:,} in {count_seconds:.2f} s ({count_load}); id list "
              f"({len(ids):,}) in {ids_seconds:.2f} s ({ids_load}); peak RSS {rss_mb():.0f} MB", flush=True)
        results.append(("(1) full evaluation, `.count()`", f"{count_seconds:.2f} s ({count:,} match; {count_load})"))
        results.append(("(1) full evaluation, id list", f"{ids_seconds:.2f} s ({ids_load})"))
        if args.explain or max(count_seconds, ids_seconds) > 10:
            plan = matching.values("pk").explain(analyze=True, buffers=True)
            print("EXPLAIN ANALYZE of (1), first lines:")
            for line in plan.splitlines()[:40]:
                print("   ", line)

        # (2) preview, several runs.
        preview_timings, loads = [], []
        for run in range(args.previews):
            loads.append(os.getloadavg()[0])
            started = time.perf_counter()
            preview = segment_preview(workspace=workspace, definition=DEFINITION, limit=20)
            preview_seconds = time.perf_counter() - started
            preview_timings.append(preview_seconds)
            how = (f"estimated from {preview['sampled']:,} sampled contacts, 95% {preview['count_low']:,}–"
                   f"{preview['count_high']:,}" if preview["estimated"] else "exact")
            print(f"(2) preview {run + 1}: count {preview['count']:,} ({how}) + {len(preview['sample'])} sample "
                  f"rows in {preview_seconds:.2f} s (sql_ms {preview['sql_ms']:.0f}; load {loads[-1]:.1f})",
                  flush=True)
        results.append((f"(2) `segment_preview` (count + 20 sample rows; median of {args.previews}; min–max)",
                        f"{statistics.median(preview_timings):.2f} s ({min(preview_timings):.2f}–"
                        f"{max(preview_timings):.2f} s; {preview['count']:,}, {how}; load "
                        f"{min(loads):.1f}–{max(loads):.1f})"))

        # (4) the dynamic segment saved: first full evaluation with membership writes.
        create_load = load()
        times = QueryTimes()
        started = time.perf_counter()
        with connection.execute_wrapper(times):
            segment = segment_create(workspace=workspace, name="Hot SaaS prospects", kind="dynamic",
                                     definition=DEFINITION, actor="bench")
        create_seconds = time.perf_counter() - started
        members = SegmentMember.objects.filter(segment=segment).count()
        steps = "; ".join(f"{name} {seconds:.2f} s" for name, seconds in
                          sorted(times.seconds.items(), key=lambda item: -item[1]))
        outside = create_seconds - sum(times.seconds.values())
        print(f"(4) segment_create (first full evaluation + {members:,} member rows, changes, events): "
              f"{create_seconds:.2f} s ({create_load}): {steps}; outside the database {outside:.2f} s; "
              f"peak RSS {rss_mb():.0f} MB", flush=True)
        results.append(("(4) `segment_create`: first full evaluation with membership writes",
                        f"{create_seconds:.2f} s ({members:,} members; {create_load}): {steps}"))

        # (3) incremental: 1,000 new events for ~1,000 random existing contacts, then the segments stage.
        timings = []
        for r in range(args.rounds):
            with connection.cursor() as cursor:
                cursor.execute("""
                    WITH picked AS (SELECT %(first)s + floor(random() * %(contacts)s)::bigint AS c,
                                           row_number() OVER () AS k
                                    FROM generate_series(1, 1000))
                    INSERT INTO tracking_event (workspace_id, message_id, type, event, anonymous_id, user_id,
                        group_id, previous_id, properties, traits, context, integrations, timestamp,
                        original_timestamp, sent_at, received_at, shard, contact_id, processed_at, error)
                    SELECT %(ws)s, 'incr-' || %(round)s || '-' || k,
                           CASE WHEN k %% 10 < 6 THEN 'page' ELSE 'track' END,
                           CASE WHEN k %% 10 < 6 THEN ''
                                WHEN k %% 10 = 6 THEN 'Asset Downloaded'
                                WHEN k %% 10 = 7 THEN 'Email Clicked' ELSE 'Feature Used' END,
                           'anon-' || c, '', '', '',
                           CASE WHEN k %% 10 < 6 THEN jsonb_build_object('path', '/pricing')
                                WHEN k %% 10 = 6 THEN jsonb_build_object('magnet_slug', 'pricing-guide')
                                ELSE '{}'::jsonb END,
                           '{}'::jsonb,
                           CASE WHEN k %% 10 < 6 THEN jsonb_build_object('page', jsonb_build_object(
                                'path', '/pricing', 'url', 'https://www.example.com/pricing')) ELSE '{}'::jsonb END,
                           '{}'::jsonb, %(now)s, %(now)s, %(now)s, %(now)s, (c %% 16)::smallint, c, %(now)s, ''
                    FROM picked RETURNING id""",
                               {"first": first_contact, "contacts": args.contacts, "ws": workspace.pk,
                                "round": r, "now": clock.now()})
                new_ids = [row[0] for row in cursor.fetchall()]
            events = list(Event.objects.filter(pk__in=new_ids).order_by("pk"))
            before = SegmentMember.objects.filter(segment=segment).count()
            round_load = load()
            started = time.perf_counter()
            with transaction.atomic():
                processing.process_events(events)
            seconds = time.perf_counter() - started
            after = SegmentMember.objects.filter(segment=segment).count()
            timings.append(seconds)
            print(f"(3) round {r + 1}: segments stage for 1,000 events "
                  f"({len({e.contact_id for e in events}):,} contacts): {seconds * 1000:.0f} ms ({round_load}), "
                  f"members {before:,} -> {after:,}", flush=True)
        median = statistics.median(timings)
        results.append((f"(3) incremental: segments stage per 1,000 events (median of {args.rounds}; min–max)",
                        f"{median * 1000:.0f} ms ({min(timings) * 1000:.0f}–{max(timings) * 1000:.0f} ms)"))
        results.append(("peak RSS of the process", f"{rss_mb():.0f} MB"))

        print()
        print(f"| step | {args.contacts:,} contacts / {args.events:,} events |")
        print("|---|---|")
        for name, value in results:
            print(f"| {name} | {value} |")
        connection.close()
    finally:
        if not args.keep:
            admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
