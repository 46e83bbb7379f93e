"""What the benchmarks share: the PostgreSQL server they use, memory readings and worker processes."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

SERVER = "postgresql://postgres@127.0.0.1:5432"


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def admin(sql: str) -> None:
    """Run one statement on the server's `postgres` database, outside a transaction (CREATE or
    DROP DATABASE)."""
    import psycopg

    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def run_workers(script: str, args: list[str], count: int, *, first_args: list[str] = ()) -> list[dict]:
    """Start `count` processes of `script` with `args` (the first one also with `first_args`) at
    once, wait for them all, and return what each printed last (one JSON object per worker)."""
    procs = [subprocess.Popen([sys.executable, script, *args, *(first_args if i == 0 else ())],
                              stdout=subprocess.PIPE, text=True) for i in range(count)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit code {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
