"""Profile the ingestion and processing hot paths in one process (cProfile), without HTTP.

    python bench/profile_ingest.py --store pg --events 20000 [--stage ingest|process|both]

Creates a scratch database (PostgreSQL `leadflow_bench_profile`, or a temporary SQLite file),
posts the benchmark's messages through the `/v1/batch` view with Django's RequestFactory, then
runs the pipeline; prints the top functions by cumulative and own time. Drops what it created.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

DB = "leadflow_bench_profile"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=["pg", "sqlite"], default="pg")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--stage", choices=["ingest", "process", "both"], default="both")
    parser.add_argument("--top", type=int, default=35)
    opts = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="leadflow-profile-")
    os.environ.update(LEADFLOW_DATA_DIR=tmp, LEADFLOW_SECRET_KEY="bench", LEADFLOW_LOG_LEVEL="WARNING",
                      DJANGO_SETTINGS_MODULE="leadflow.settings")
    if opts.store == "pg":
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB}")
        os.environ["LEADFLOW_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{DB}"
    else:
        os.environ["LEADFLOW_DATABASE_URL"] = f"sqlite:///{tmp}/profile.sqlite3"
    try:
        import django

        django.setup()
        import orjson
        from django.core.management import call_command
        from django.test import RequestFactory

        from ingest import BATCH, make_messages
        from leadflow.core.pipeline import process_pending
        from leadflow.core.services import api_key_create, workspace_create
        from leadflow.tracking.api_views import ingest

        call_command("migrate", verbosity=0)
        ws = workspace_create(name="Profile")
        _, key = api_key_create(workspace=ws, kind="write")
        auth = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        messages = make_messages(opts.events, seed=1, people=max(1, opts.events // 5))
        bodies = [orjson.dumps({"batch": messages[i:i + BATCH]}) for i in range(0, len(messages), BATCH)]
        factory = RequestFactory()

        def run_ingest():
            for body in bodies:
                response = ingest(factory.post("/v1/batch", data=body, content_type="application/json",
                                               HTTP_AUTHORIZATION=auth), "batch")
                assert response.status_code == 200, response.content

        for name, fn in (("ingest", run_ingest), ("process", process_pending)):
            if opts.stage not in (name, "both"):
                continue
            profiler = cProfile.Profile()
            start = time.perf_counter()
            profiler.enable()
            fn()
            profiler.disable()
            took = time.perf_counter() - start
            print(f"\n#### {name}: {opts.events} events in {took:.2f}s = {opts.events / took:,.0f}/s "
                  f"(under cProfile)")
            stats = pstats.Stats(profiler).strip_dirs()
            stats.sort_stats("cumulative").print_stats(opts.top)
            stats.sort_stats("tottime").print_stats(opts.top)
    finally:
        from django.db import connections

        connections.close_all()
        if opts.store == "pg":
            import psycopg

            with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
