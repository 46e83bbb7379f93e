"""Ingestion benchmark: events per second through `/v1/batch`, the raw-insert ceiling beside it,
and the time until the events are visible on profiles.

It starts a real LeadFlow (`leadflow migrate`, `workspaces create`, `keys create`, `leadflow web`
as subprocesses) on a fresh PostgreSQL database and/or a temporary SQLite file, posts batches of
100 realistic Segment messages from several client processes over keep-alive HTTP connections
(stdlib `http.client`), then runs `leadflow worker` processes until every event is processed.
Everything it created is removed at the end.

    python bench/ingest.py                         # both stores, default sizes
    python bench/ingest.py --store pg --events 200000 --clients 4 --web-workers 3
    python bench/ingest.py --store sqlite --events 100000

See docs/benchmarks.md for the method and the figures measured.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import http.client
import multiprocessing as mp
import os
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import orjson

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DB = "leadflow_bench"
BATCH = 100
UTC = dt.timezone.utc

# ---------------------------------------------------------------------------------------------
# Realistic messages
# ---------------------------------------------------------------------------------------------

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
]
PAGES = [
    ("/", "Home | Acme Analytics"), ("/pricing", "Pricing | Acme Analytics"),
    ("/blog/lead-scoring-101", "Lead scoring 101 | Acme Blog"),
    ("/ebooks/nurture-playbook", "The Nurture Playbook (free ebook) | Acme"),
    ("/webinars/q3-product-tour", "Webinar: Q3 product tour | Acme"),
    ("/customers/globex", "How Globex doubled pipeline | Acme"), ("/docs/getting-started", "Docs"),
    ("/trial", "Start your free trial | Acme"), ("/features/journeys", "Journeys | Acme"),
]
CAMPAIGNS = [
    None, None, None,
    {"name": "spring_launch", "source": "google", "medium": "cpc", "term": "lead nurturing software",
     "content": "ad-variant-b"},
    {"name": "nurture_playbook", "source": "linkedin", "medium": "paid_social", "content": "carousel"},
    {"name": "weekly_digest", "source": "newsletter", "medium": "email"},
    {"name": "partner_q3", "source": "globex", "medium": "partner"},
]
REFERRERS = ["", "https://www.google.com/", "https://www.linkedin.com/feed/", "https://news.ycombinator.com/",
             "https://duckduckgo.com/"]
TRACK_EVENTS = [
    ("Button Clicked", lambda r: {"label": r.choice(["Book a demo", "Start trial", "Download"]),
                                  "location": r.choice(["hero", "nav", "footer"])}),
    ("Video Played", lambda r: {"video_id": f"vid_{r.randrange(40)}", "position": r.randrange(600),
                                "title": "Product tour in 5 minutes", "muted": r.random() < 0.3}),
    ("Ebook Downloaded", lambda r: {"magnet": "nurture-playbook", "format": "pdf", "pages": 42}),
    ("Pricing Viewed", lambda r: {"plan": r.choice(["starter", "growth", "enterprise"]),
                                  "billing": r.choice(["monthly", "annual"]), "seats": r.randrange(1, 200)}),
    ("Trial Started", lambda r: {"plan": "growth", "trial_days": 14, "coupon": None,
                                 "referrer_code": f"ref-{r.randrange(10_000)}"}),
]
FIRST = ["ada", "grace", "alan", "edsger", "barbara", "ken", "margaret", "linus", "guido", "radia"]
LAST = ["lovelace", "hopper", "turing", "dijkstra", "liskov", "thompson", "hamilton", "torvalds"]
TITLES = ["VP Marketing", "Marketing Ops Manager", "Head of Growth", "CMO", "Demand Gen Lead", "Founder"]
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "Canada", "Germany", "ES"]


def _iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_messages(count: int, *, seed: int, people: int) -> list[dict]:
    """`count` Segment messages: ~62% pages, ~30% tracks, ~8% identifies, from `people` visitors."""
    r = random.Random(seed)
    now = dt.datetime.now(UTC)
    out = []
    for _ in range(count):
        person = r.randrange(people)
        anon = str(uuid.UUID(int=(person * 2654435761 + 97) % (1 << 128), version=4))
        known = person % 5 == 0  # one visitor in five has identified at some point
        t = now - dt.timedelta(seconds=r.randrange(3600))
        page, title = r.choice(PAGES)
        campaign = r.choice(CAMPAIGNS)
        query = ("?" + "&".join(f"utm_{k}={v}" for k, v in campaign.items())) if campaign else ""
        context = {
            "ip": f"203.0.{r.randrange(256)}.{r.randrange(1, 255)}",
            "userAgent": r.choice(USER_AGENTS),
            "locale": r.choice(["en-US", "en-GB", "de-DE", "fr-FR"]),
            "timezone": r.choice(["America/New_York", "Europe/London", "Europe/Berlin"]),
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "page": {"path": page, "referrer": r.choice(REFERRERS), "search": query, "title": title,
                     "url": f"https://www.acme.example{page}{query}"},
            "screen": {"width": 1920, "height": 1080, "density": 1},
        }
        if campaign:
            context["campaign"] = dict(campaign)
        msg: dict = {"anonymousId": anon, "messageId": f"ajs-{uuid.UUID(int=r.getrandbits(128), version=4)}",
                     "timestamp": _iso(t), "sentAt": _iso(t + dt.timedelta(milliseconds=r.randrange(50, 900))),
                     "context": context, "integrations": {}}
        if known:
            msg["userId"] = f"user-{person}"
        roll = r.random()
        if roll < 0.08:
            msg["type"] = "identify"
            first, last = FIRST[person % len(FIRST)], LAST[person % len(LAST)]
            msg["userId"] = f"user-{person}"
            msg["traits"] = {
                "email": f"{first}.{last}.{person}@example{person % 300}.com",
                "firstName": first.title(), "lastName": last.title(), "title": TITLES[person % len(TITLES)],
                "company": {"name": f"Example {person % 300} Ltd", "industry": "Software",
                            "employee_count": 10 * (person % 50 + 1)},
                "country": COUNTRIES[person % len(COUNTRIES)], "plan": r.choice(["free", "trial", "paid"]),
                "newsletter_opt_in": r.random() < 0.5, "lead_source": r.choice(["webinar", "ebook", "demo"]),
            }
        elif roll < 0.38:
            name, props = r.choice(TRACK_EVENTS)
            msg["type"] = "track"
            msg["event"] = name
            msg["properties"] = {**props(r), "path": page, "session_id": f"s-{r.getrandbits(48):x}"}
        else:
            msg["type"] = "page"
            msg["name"] = title.split(" | ")[0]
            msg["properties"] = {"path": page, "referrer": context["page"]["referrer"], "title": title,
                                 "url": context["page"]["url"], "search": query}
        out.append(msg)
    return out


def client_messages(index: int, per_client: int, people: int) -> list[dict]:
    return make_messages(per_client, seed=1000 + index, people=people)


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------


def _http_client(index, per_client, people, port, write_key, barrier, results):
    messages = client_messages(index, per_client, people)
    bodies = [orjson.dumps({"batch": messages[i:i + BATCH], "sentAt": _iso(dt.datetime.now(UTC))})
              for i in range(0, len(messages), BATCH)]
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    headers = {"Content-Type": "application/json", "Authorization": auth, "Connection": "keep-alive"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies, accepted, retries, failures = [], 0, 0, []
    barrier.wait()
    cpu = time.process_time()
    first = time.monotonic()
    last = first
    for body in bodies:
        while True:
            start = time.monotonic()
            try:
                conn.request("POST", "/v1/batch", body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                retries += 1
                if retries > 200:
                    failures.append(f"connection: {exc}")
                    break
                continue
            end = time.monotonic()
            if response.status in (429, 503):
                retries += 1
                time.sleep(float(response.getheader("Retry-After") or 0.1) / 10)
                continue
            latencies.append(end - start)
            if response.status == 200:
                accepted += orjson.loads(data).get("accepted", 0)
            else:
                failures.append(f"{response.status}: {data[:200]!r}")
            last = end
            break
    conn.close()
    results.put({"latencies": latencies, "accepted": accepted, "retries": retries,
                 "failures": failures, "first": first, "last": last, "cpu": time.process_time() - cpu,
                 "bytes": sum(len(b) for b in bodies)})


def _event_row(event) -> tuple:
    return (event.workspace_id, event.message_id, event.type, event.event, event.anonymous_id,
            event.user_id, event.group_id, event.previous_id, orjson.dumps(event.properties).decode(),
            orjson.dumps(event.traits).decode(), orjson.dumps(event.context).decode(),
            orjson.dumps(event.integrations).decode(), event.timestamp, event.original_timestamp,
            event.sent_at, event.received_at, event.shard, "")


COLUMNS = ("workspace_id, message_id, type, event, anonymous_id, user_id, group_id, previous_id, "
           "properties, traits, context, integrations, timestamp, original_timestamp, sent_at, "
           "received_at, shard, error")


def _sqlite_time(value):
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


def _raw_client(index, per_client, people, store, target, workspace_id, barrier, results):
    """The ceiling: the same rows, built by LeadFlow's own validator, inserted with the driver."""
    from leadflow.tracking.ingest import message_to_event

    messages = client_messages(index, per_client, people)
    received = dt.datetime.now(UTC)
    rows = [_event_row(message_to_event(m, workspace_id=workspace_id, received_at=received))
            for m in messages]
    placeholders = ", ".join(["%s" if store == "pg" else "?"] * 18)
    sql = (f"INSERT INTO tracking_event ({COLUMNS}) VALUES ({placeholders}) "
           "ON CONFLICT (workspace_id, message_id) DO NOTHING")
    if store == "pg":
        import psycopg

        conn = psycopg.connect(target)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        conn.commit()
    else:
        rows = [r[:12] + tuple(_sqlite_time(v) for v in r[12:16]) + r[16:] for r in rows]
        conn = sqlite3.connect(target, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        cur = conn.cursor()
    latencies = []
    barrier.wait()
    cpu = time.process_time()
    first = time.monotonic()
    for i in range(0, len(rows), BATCH):
        start = time.monotonic()
        if store == "pg":
            cur.executemany(sql, rows[i:i + BATCH])
            conn.commit()
        else:
            cur.execute("BEGIN IMMEDIATE")
            cur.executemany(sql, rows[i:i + BATCH])
            cur.execute("COMMIT")
        latencies.append(time.monotonic() - start)
    last = time.monotonic()
    conn.close()
    results.put({"latencies": latencies, "accepted": len(rows), "retries": 0, "failures": [],
                 "first": first, "last": last, "bytes": 0, "cpu": time.process_time() - cpu})


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by live LeadFlow web/worker processes and PostgreSQL backends,
    plus this benchmark's reaped children (its clients)."""
    out = {"web": 0.0, "worker": 0.0, "postgres": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ")
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = ("web" if b"leadflow web" in cmd else "worker" if b"leadflow worker" in cmd
                 else "postgres" if cmd.startswith(b"postgres") else None)
        if group:
            out[group] += (int(stat[11]) + int(stat[12])) / _TICK
    out["wall"] = time.monotonic()
    return out


def cpu_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


@dataclass
class Phase:
    events: int = 0
    seconds: float = 0.0
    latencies: list = field(default_factory=list)
    retries: int = 0
    failures: list = field(default_factory=list)
    last: float = 0.0
    bytes: int = 0
    cpu: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_clients(target, clients: int, args) -> Phase:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(i, *args, barrier, results)) for i in range(clients)]
    for p in procs:
        p.start()
    barrier.wait()  # every client has built its payloads
    before = cpu_seconds()
    outs = [results.get() for _ in procs]
    for p in procs:
        p.join()
    phase = Phase(cpu=cpu_delta(before, cpu_seconds()))
    start = min(o["first"] for o in outs)
    phase.last = max(o["last"] for o in outs)
    phase.seconds = phase.last - start
    for o in outs:
        phase.events += o["accepted"]
        phase.latencies += o["latencies"]
        phase.retries += o["retries"]
        phase.failures += o["failures"]
        phase.bytes += o["bytes"]
    phase.cpu["clients"] = sum(o["cpu"] for o in outs)
    return phase


# ---------------------------------------------------------------------------------------------
# Stores and LeadFlow processes
# ---------------------------------------------------------------------------------------------


class Store:
    def __init__(self, kind: str, tmp: str):
        self.kind = kind
        if kind == "pg":
            self.url = f"postgresql://postgres@127.0.0.1:5432/{PG_DB}"
            self.target = f"host=127.0.0.1 port=5432 user=postgres dbname={PG_DB}"
        else:
            self.path = os.path.join(tmp, "bench.sqlite3")
            self.url = f"sqlite:///{self.path}"
            self.target = self.path

    def create(self) -> None:
        if self.kind == "pg":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {PG_DB}")

    def drop(self) -> None:
        if self.kind == "pg":
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")

    def query(self, sql: str):
        if self.kind == "pg":
            import psycopg

            with psycopg.connect(self.target, autocommit=True) as conn:
                return conn.execute(sql).fetchone()
        conn = sqlite3.connect(self.target, timeout=60)
        try:
            return conn.execute(sql).fetchone()
        finally:
            conn.close()

    def reset_events(self) -> None:
        """Empty the event log after the ceiling run so the HTTP run starts from the same table."""
        if self.kind == "pg":
            import psycopg

            with psycopg.connect(self.target, autocommit=True) as conn:
                conn.execute("TRUNCATE tracking_event")
                conn.execute("VACUUM ANALYZE tracking_event")
        else:
            conn = sqlite3.connect(self.target, timeout=60, isolation_level=None)
            conn.execute("DELETE FROM tracking_event")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()


def _leadflow(env, *argv) -> str:
    out = subprocess.run([sys.executable, "-m", "leadflow", *argv], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("leadflow web exited during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"leadflow web did not listen on {port} within {timeout}s")


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass
class Result:
    store: str
    events: int
    http: Phase
    raw: Phase | None
    to_profile: float | None = None
    worker_rate: float | None = None
    contacts: int = 0
    unprocessed: int = 0
    notes: list = field(default_factory=list)


def bench_store(kind: str, opts) -> Result:
    events = opts.events or (200_000 if kind == "pg" else 100_000)
    clients = opts.clients
    per_client = events // clients
    events = per_client * clients
    people = max(1, events // opts.events_per_person)
    workers = opts.workers or (2 if kind == "pg" else 1)
    tmp = tempfile.mkdtemp(prefix=f"leadflow-bench-{kind}-")
    store = Store(kind, tmp)
    env = {**os.environ, "LEADFLOW_DATABASE_URL": store.url, "LEADFLOW_DATA_DIR": tmp,
           "LEADFLOW_SECRET_KEY": "bench-secret", "LEADFLOW_LOG_LEVEL": "WARNING"}
    env.pop("LEADFLOW_ACCESS_LOG", None)
    procs: list[subprocess.Popen] = []
    print(f"\n== {kind}: {events} events, {clients} clients, web --workers {opts.web_workers} "
          f"--threads {opts.web_threads}, {workers} worker(s)", flush=True)
    try:
        store.create()
        _leadflow(env, "migrate")
        slug = _leadflow(env, "workspaces", "create", "Bench", "--slug", "bench")
        write_key = _leadflow(env, "keys", "create", "--kind", "write", "--workspace", slug)
        workspace_id = store.query("SELECT id FROM core_workspace WHERE slug = 'bench'")[0]

        raw = None
        if not opts.no_raw:
            print("  raw ceiling (driver executemany, 100 rows per transaction) ...", flush=True)
            raw = run_clients(_raw_client, clients, (per_client, people, kind, store.target, workspace_id))
            print(f"    {raw.events} rows in {raw.seconds:.2f}s = {raw.rate:,.0f}/s", flush=True)
            print("    CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in raw.cpu.items()), flush=True)
            store.reset_events()

        port = opts.port or _free_port()
        web = subprocess.Popen([sys.executable, "-m", "leadflow", "web", "--host", "127.0.0.1",
                                "--port", str(port), "--workers", str(opts.web_workers),
                                "--threads", str(opts.web_threads)], env=env)
        procs.append(web)
        _wait_port(port, web)
        worker_env = {**env, **({"LEADFLOW_WORKER_BATCH": str(opts.worker_batch)} if opts.worker_batch else {})}
        worker_cmd = [sys.executable, "-m", "leadflow", "worker", "--idle-sleep", "0.05"]
        if opts.process_during_ingest:
            procs += [subprocess.Popen(worker_cmd, env=worker_env) for _ in range(workers)]
        print("  HTTP ingest through /v1/batch ...", flush=True)
        http = run_clients(_http_client, clients, (per_client, people, port, write_key))
        print(f"    {http.events} accepted in {http.seconds:.2f}s = {http.rate:,.0f}/s "
              f"(p50 {http.pct(.5):.0f} ms, p95 {http.pct(.95):.0f} ms, {http.retries} retries, "
              f"{len(http.failures)} failures)", flush=True)
        print("    CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in http.cpu.items()), flush=True)
        for failure in http.failures[:5]:
            print(f"    failure: {failure}")
        stored = store.query("SELECT count(*) FROM tracking_event")[0]
        result = Result(kind, events, http, raw)
        if stored != events:
            result.notes.append(f"{stored} rows stored for {events} sent")

        if opts.no_process:
            return result
        worker_start = time.monotonic()
        if not opts.process_during_ingest:
            procs += [subprocess.Popen(worker_cmd, env=worker_env) for _ in range(workers)]
        print(f"  processing with {workers} worker(s) ...", flush=True)
        deadline = time.monotonic() + opts.process_timeout
        pending = None
        while time.monotonic() < deadline:
            pending = store.query("SELECT count(*) FROM tracking_event WHERE processed_at IS NULL")[0]
            if pending == 0:
                break
            time.sleep(0.2)
        done = time.monotonic()
        if pending == 0:
            result.to_profile = done - http.last
            result.worker_rate = events / (done - (http.last - http.seconds if opts.process_during_ingest
                                                   else worker_start))
        else:
            result.notes.append(f"{pending} events still pending after {opts.process_timeout}s")
        result.unprocessed = store.query(
            "SELECT count(*) FROM tracking_event WHERE contact_id IS NULL OR error <> ''")[0]
        result.contacts = store.query("SELECT count(*) FROM contacts_contact")[0]
        if result.to_profile is not None:
            print(f"    all processed {result.to_profile:.1f}s after the last batch; "
                  f"worker {result.worker_rate:,.0f} events/s; {result.contacts} contacts", flush=True)
        return result
    finally:
        _stop(procs)
        if not opts.keep:
            store.drop()
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  kept {store.url}")


def print_table(results: list[Result]) -> None:
    print("\n" + "=" * 100)
    head = (f"{'store':<7}{'events':>8}{'HTTP ev/s':>11}{'raw ev/s':>10}{'ratio':>7}{'p50 ms':>8}"
            f"{'p95 ms':>8}{'to-profile s':>14}{'worker ev/s':>13}{'contacts':>10}")
    print(head)
    print("-" * len(head))
    for r in results:
        raw = r.raw.rate if r.raw else 0
        ratio = f"{r.http.rate / raw:.2f}" if raw else "-"
        print(f"{r.store:<7}{r.events:>8}{r.http.rate:>11,.0f}{raw:>10,.0f}{ratio:>7}{r.http.pct(.5):>8.0f}"
              f"{r.http.pct(.95):>8.0f}{(f'{r.to_profile:.1f}' if r.to_profile is not None else '-'):>14}"
              f"{(f'{r.worker_rate:,.0f}' if r.worker_rate else '-'):>13}{r.contacts:>10}")
        for note in r.notes:
            print(f"  note: {note}")
        if r.unprocessed:
            print(f"  note: {r.unprocessed} events have no contact or an error")
    if results:
        r = results[0]
        print(f"\nmessages {r.http.bytes / max(r.events, 1):.0f} bytes each on average (JSON, in batches of {BATCH}); "
              f"{os.cpu_count()} cores shared by clients, server, workers and the database")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=["pg", "sqlite", "both"], default="both")
    parser.add_argument("--events", type=int, default=0,
                        help="events to send (default 200000 on PostgreSQL, 100000 on SQLite)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes (default 4)")
    parser.add_argument("--web-workers", type=int, default=int(os.environ.get("LEADFLOW_WEB_WORKERS", 0)) or
                        min(4, (os.cpu_count() or 1) + 1), help="`leadflow web --workers` (default: its own)")
    parser.add_argument("--web-threads", type=int, default=int(os.environ.get("LEADFLOW_WEB_THREADS", 0)) or 4,
                        help="`leadflow web --threads` (default: its own)")
    parser.add_argument("--workers", type=int, default=0,
                        help="`leadflow worker` processes (default 2 on PostgreSQL, 1 on SQLite)")
    parser.add_argument("--worker-batch", type=int, default=0, help="LEADFLOW_WORKER_BATCH for the workers")
    parser.add_argument("--events-per-person", type=int, default=5,
                        help="average events per distinct anonymous id (default 5)")
    parser.add_argument("--process-during-ingest", action="store_true",
                        help="run the workers while ingesting (default: start them after the last batch)")
    parser.add_argument("--process-timeout", type=float, default=900)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-insert ceiling")
    parser.add_argument("--no-process", action="store_true", help="skip the worker phase")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the database and data folder")
    opts = parser.parse_args()

    # The ceiling builds its rows with LeadFlow's own validator, so Django must be configured.
    tmp_settings = tempfile.mkdtemp(prefix="leadflow-bench-settings-")
    os.environ.setdefault("LEADFLOW_SECRET_KEY", "bench-secret")
    os.environ["LEADFLOW_DATA_DIR"] = tmp_settings
    os.environ["DJANGO_SETTINGS_MODULE"] = "leadflow.settings"
    import django

    django.setup()
    results = []
    try:
        for kind in (["pg", "sqlite"] if opts.store == "both" else [opts.store]):
            results.append(bench_store(kind, opts))
    finally:
        shutil.rmtree(tmp_settings, ignore_errors=True)
        print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
