"""Benchmark: rescoring 1,000,000 contacts' fit after a rule change, and a decay pass over them.

On PostgreSQL: creates the database `leadflow_bench_scoring` on postgresql://postgres@127.0.0.1:5432/,
migrates it with `leadflow migrate`, generates the contacts (with companies and traits) and a
ledger of engagement entries with INSERT … SELECT generate_series, then times, in this process:

1. `services.rule_update` of a fit rule (points changed): every contact's fit is recomputed,
   streamed in id batches of 5,000, only changed rows written;
2. `decay_run(now=…)` one day later: engagement of every contact with ledger entries, one
   `UPDATE … FROM (aggregate)` per range of 5,000 contact ids.

Prints the figures and the process's peak RSS after each step (ru_maxrss: flat means streamed),
then drops the database. Usage: python bench/scoring.py [--contacts N] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time

from benchlib import SERVER, admin, rss_mb

DB = "leadflow_bench_scoring"


def generate(cursor, workspace_id: int, contacts: int, rules: dict[str, int], now: dt.datetime) -> int:
    companies = max(contacts // 20, 1)
    cursor.execute("""
        INSERT INTO contacts_company (workspace_id, name, domain, traits, created_at, updated_at)
        SELECT %(ws)s, 'Company ' || n, 'company' || n || '.example',
               jsonb_build_object('employees', (n * 7919) %% 20000,
                                  'industry', (ARRAY['Software','Retail','Manufacturing','SaaS','Education'])[1 + n %% 5]),
               %(now)s, %(now)s
        FROM generate_series(1, %(n)s) AS n""", {"ws": workspace_id, "now": now, "n": companies})
    cursor.execute("SELECT MIN(id) FROM contacts_company WHERE workspace_id = %s", [workspace_id])
    first_company = cursor.fetchone()[0]
    cursor.execute("""
        INSERT INTO contacts_contact (workspace_id, email, user_id, first_name, last_name, phone, title, country,
            timezone, traits, trait_times, company_id, first_touch, latest_touch, source_channel, fit_score,
            fit_grade, engagement_score, lifecycle_stage, created_at, updated_at)
        SELECT %(ws)s,
               'person' || n || '@' || (ARRAY['gmail.com','company' || (n %% %(companies)s + 1) || '.example',
                                              'yahoo.co.uk','outlook.com','acme.io'])[1 + n %% 5],
               'u' || n, 'First' || n, 'Last' || n, '',
               (ARRAY['Marketing Director','Software Engineer','VP Sales','Student','Product Manager',
                      'Head of Growth','Consultant','CEO','Intern','Account Manager'])[1 + (n * 7) %% 10],
               (ARRAY['US','DE','GB','FR','NZ','IN','BR'])[1 + n %% 7], '',
               jsonb_build_object('plan', (ARRAY['free','pro','enterprise'])[1 + n %% 3], 'seats', n %% 50),
               '{}'::jsonb, %(first_company)s + (n %% %(companies)s), '{}'::jsonb, '{}'::jsonb, 'organic_search',
               0, '', 0, '', %(now)s, %(now)s
        FROM generate_series(1, %(n)s) AS n""",
                   {"ws": workspace_id, "now": now, "n": contacts, "companies": companies,
                    "first_company": first_company})
    cursor.execute("SELECT MIN(id) FROM contacts_contact WHERE workspace_id = %s", [workspace_id])
    first_contact = cursor.fetchone()[0]
    # 60% of contacts have engagement: 1 to 8 entries each over the last 120 days (~2.7M entries).
    cursor.execute("""
        INSERT INTO scoring_scoreentry (workspace_id, contact_id, rule_id, event_id, points, at, expires_at)
        SELECT %(ws)s, %(first)s + c, r.rule_id, row_number() OVER (), r.points,
               %(now)s - make_interval(secs => ((c * 131 + k * 977) %% (120 * 86400))),
               CASE WHEN r.expires THEN %(now)s - make_interval(secs => ((c * 131 + k * 977) %% (120 * 86400)))
                                        + interval '90 days' END
        FROM generate_series(0, %(n)s - 1) AS c
        CROSS JOIN LATERAL generate_series(1, 1 + (c * 13) %% 8) AS k
        CROSS JOIN LATERAL (VALUES
            (%(page)s, 1, true), (%(pricing)s, 10, false), (%(download)s, 15, false), (%(click)s, 5, false),
            (%(webinar)s, 20, false), (%(unsub)s, -20, false)) AS r(rule_id, points, expires)
        WHERE c %% 5 < 3 AND r.rule_id = (ARRAY[%(page)s, %(page)s, %(page)s, %(pricing)s, %(download)s,
                                                 %(click)s, %(click)s, %(webinar)s, %(unsub)s])[1 + (c + k * 3) %% 9]
        """, {"ws": workspace_id, "first": first_contact, "n": contacts, "now": now, **rules})
    cursor.execute("SELECT COUNT(*) FROM scoring_scoreentry WHERE workspace_id = %s", [workspace_id])
    return cursor.fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args()

    admin(f"DROP DATABASE IF EXISTS {DB}")
    admin(f"CREATE DATABASE {DB}")
    env = {**os.environ, "LEADFLOW_DATABASE_URL": f"{SERVER}/{DB}"}
    try:
        subprocess.run([sys.executable, "-m", "leadflow", "migrate", "-v", "0"], env=env, check=True)
        os.environ.update(LEADFLOW_DATABASE_URL=env["LEADFLOW_DATABASE_URL"],
                          DJANGO_SETTINGS_MODULE="leadflow.settings")
        import django

        django.setup()
        from django.db import connection, transaction

        from leadflow.core import clock
        from leadflow.core.services import workspace_create
        from leadflow.scoring import services
        from leadflow.scoring.decay import decay_run
        from leadflow.scoring.models import ScoringRule

        now = clock.now()
        workspace = workspace_create(name="Bench", slug="bench")
        services.scoring_defaults_ensure(workspace_id=workspace.pk)
        by_name = {r.name: r for r in ScoringRule.objects.filter(workspace=workspace)}
        rules = {"page": by_name["Page view"].pk, "pricing": by_name["Pricing page visit"].pk,
                 "download": by_name["Lead magnet download"].pk, "click": by_name["Email click"].pk,
                 "webinar": by_name["Webinar attended"].pk, "unsub": by_name["Unsubscribed"].pk}
        started = time.perf_counter()
        with transaction.atomic(), connection.cursor() as cursor:
            entries = generate(cursor, workspace.pk, args.contacts, rules, now)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE contacts_contact")
            cursor.execute("VACUUM ANALYZE scoring_scoreentry")
            cursor.execute("VACUUM ANALYZE contacts_company")
        print(f"generated {args.contacts:,} contacts and {entries:,} ledger entries in "
              f"{time.perf_counter() - started:.1f} s; peak RSS {rss_mb():.0f} MB")

        # Initial state: everyone scored once (not timed as the benchmark; shown for reference).
        started = time.perf_counter()
        first = services.rules_rescore(workspace=workspace, now=now)
        print(f"initial full rescore (fit + engagement): {time.perf_counter() - started:.1f} s, {first}; "
              f"peak RSS {rss_mb():.0f} MB")

        rule = by_name["Senior title (director and above)"]
        started = time.perf_counter()
        with transaction.atomic():
            services.rule_update(rule=rule, changes={"points": 30}, actor="bench")
        fit_seconds = time.perf_counter() - started
        changed = ScoringRule.objects.get(pk=rule.pk).version
        print(f"(1) fit rescore of {args.contacts:,} contacts after a rule change: {fit_seconds:.1f} s "
              f"(rule version {changed}); peak RSS {rss_mb():.0f} MB")

        later = now + dt.timedelta(days=1)
        started = time.perf_counter()
        with transaction.atomic():
            written = decay_run(now=later)
        decay_seconds = time.perf_counter() - started
        print(f"(2) decay pass over {args.contacts:,} contacts ({entries:,} entries), one day later: "
              f"{decay_seconds:.1f} s, {written:,} scores changed; peak RSS {rss_mb():.0f} MB")
        started = time.perf_counter()
        with transaction.atomic():
            again = decay_run(now=later)
        print(f"    the same pass again (idempotent): {time.perf_counter() - started:.1f} s, {again:,} changed")
        connection.close()
    finally:
        if not args.keep:
            admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
