"""Crash test (PostgreSQL): worker processes killed at random points while they advance 100,000
enrollments leave every enrollment where it should be, with exactly one email queued each.

The journey is a send followed by a week's wait. 100,000 people are enrolled (the first through
`journey_enroll`, the rest copied from that row in one `INSERT … SELECT`), all due at the send.
Then, in rounds, two or three worker processes (`python -c` running `journeys_advance` until
nothing is due, on the test's committed database) are started, and once a random number of
further enrollments has moved on, one, several or all of them get SIGKILL: mid-statement,
mid-pass or between passes, whatever the moment is. Killed workers are replaced. After the
kill rounds, workers run until nothing is due.

Afterwards every enrollment waits at the wait node having passed the send once (one step),
there is exactly one message per enrollment with the send's dedupe key and one `queued` event
per message, and the history holds one `sent` step per enrollment pointing at that message.
These hold for any kill timing; the random generator is seeded so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from leadflow.contacts.models import Contact
from leadflow.journeys.models import Enrollment
from leadflow.journeys.services import journey_enroll

from journey_helpers import apply, template

pytestmark = [pytest.mark.postgres]

ENROLLMENTS = int(os.environ.get("LEADFLOW_CRASH_ENROLLMENTS", "100000"))
SEED = int(os.environ.get("LEADFLOW_CRASH_SEED", "20260302"))
KILL_ROUNDS = 6

WORKER = """
import django
django.setup()
from leadflow.journeys.engine import journeys_advance
while journeys_advance():
    pass
"""

JOURNEY = {"name": "Crash", "slug": "crash", "triggers": [{"manual": True}],
           "nodes": [{"id": "mail", "type": "send_email", "template": "crash-hello", "next": "week"},
                     {"id": "week", "type": "wait", "days": 7}]}


def _copy_rows(model, *, source_id: int, replace: dict[str, str], source_sql: str, params: dict) -> int:
    """Insert one row per row of `source_sql` (aliased `s`), copying every column of row
    `source_id` of `model` (aliased `t`) except those in `replace` (column → SQL expression)."""
    ops = connection.ops
    table = ops.quote_name(model._meta.db_table)
    columns = [f.column for f in model._meta.concrete_fields if not f.primary_key]
    values = [replace.get(c, f"t.{ops.quote_name(c)}") for c in columns]
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} ({', '.join(ops.quote_name(c) for c in columns)}) "
                       f"SELECT {', '.join(values)} FROM {table} AS t, ({source_sql}) AS s "
                       f"WHERE t.{ops.quote_name(model._meta.pk.column)} = %(source)s",
                       {"source": source_id, **params})
        return cursor.rowcount


def _database_url() -> str:
    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgresql://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _progress(journey_id: int) -> int:
    """How many enrollments have passed the send (committed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM journeys_enrollment WHERE journey_id = %s AND node = 'week'",
                       [journey_id])
        return cursor.fetchone()[0]


def _poll_until(condition, *, timeout: float) -> bool:
    """Check `condition` every 20 ms until it holds or `timeout` seconds pass (the workers are
    real processes on the wall clock; nothing here depends on how long a step takes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def crash_journey(transactional_db):
    from conftest import make_workspace

    ws = make_workspace("Crash test")
    template(ws, "crash-hello")
    journey = apply(ws, JOURNEY)
    first = Contact.objects.create(workspace=ws.workspace, email="crash0@example.com", user_id="c0")
    [seed] = journey_enroll(journey=journey, contacts=[first], actor="test")
    made = _copy_rows(Contact, source_id=first.pk, params={"n": ENROLLMENTS - 1},
                      source_sql="SELECT generate_series(1, %(n)s) AS n",
                      replace={"email": "'crash' || s.n || '@example.com'", "user_id": "'c' || s.n"})
    assert made == ENROLLMENTS - 1
    made = _copy_rows(Enrollment, source_id=seed.pk, params={"ws": ws.workspace.pk, "first": first.pk},
                      source_sql="SELECT id FROM contacts_contact WHERE workspace_id = %(ws)s AND id <> %(first)s",
                      replace={"contact_id": "s.id"})
    assert made == ENROLLMENTS - 1
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE journeys_enrollment")
    return journey


def test_workers_killed_at_random_points_leave_every_enrollment_right_and_send_once(crash_journey):
    journey = crash_journey
    rng = random.Random(SEED)
    env = {**os.environ, "LEADFLOW_DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "leadflow.settings",
           "LEADFLOW_LOG_LEVEL": "CRITICAL"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    workers = [start() for _ in range(rng.choice([2, 3]))]
    kills = []
    try:
        for _ in range(KILL_ROUNDS):
            before = _progress(journey.pk)
            if before >= ENROLLMENTS:
                break
            target = min(ENROLLMENTS, before + rng.randint(1, ENROLLMENTS // (KILL_ROUNDS + 2)))
            _poll_until(lambda: _progress(journey.pk) >= target, timeout=120)
            victims = rng.sample(workers, rng.randint(1, len(workers)))
            for w in victims:
                w.send_signal(signal.SIGKILL)
            for w in victims:
                w.wait(timeout=30)
            kills.append((len(victims), _progress(journey.pk)))
            workers = [w for w in workers if w not in victims] + [start() for _ in victims]
        for w in workers:  # the last ones run until nothing is due
            assert w.wait(timeout=600) == 0, "a worker that was not killed failed"
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    assert sum(1 for _, done in kills if 0 < done < ENROLLMENTS) >= 3, ("the kills hit work in flight", kills)
    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT count(*), count(*) FILTER (WHERE state = 'active' AND node = 'week' AND resume = 'wait'
                                              AND steps = 1 AND last_node = 'mail' AND due_at > entered_at
                                              AND wait_event = '')
            FROM journeys_enrollment WHERE journey_id = %s""", [journey.pk])
        total, waiting = cursor.fetchone()
        assert total == ENROLLMENTS and waiting == ENROLLMENTS, (total, waiting)

        cursor.execute("""
            SELECT count(*), count(DISTINCT m.dedupe_key), count(DISTINCT m.contact_id),
                   count(*) FILTER (WHERE m.dedupe_key = 'journey:' || e.id || ':mail:0' AND m.contact_id = e.contact_id)
            FROM messaging_message m LEFT JOIN journeys_enrollment e
                 ON e.journey_id = %s AND m.dedupe_key = 'journey:' || e.id || ':mail:0'
            WHERE m.workspace_id = %s""", [journey.pk, journey.workspace_id])
        messages, keys, people, matching = cursor.fetchone()
        assert messages == keys == people == matching == ENROLLMENTS, (messages, keys, people, matching)

        cursor.execute("""
            SELECT count(*), count(DISTINCT ev.message_id) FROM messaging_messageevent ev
            JOIN messaging_message m ON m.id = ev.message_id WHERE m.workspace_id = %s AND ev.kind = 'queued'""",
                       [journey.workspace_id])
        assert cursor.fetchone() == (ENROLLMENTS, ENROLLMENTS), "one `queued` event per message"

        cursor.execute("""
            SELECT count(*), count(DISTINCT s.enrollment_id),
                   count(*) FILTER (WHERE m.dedupe_key = 'journey:' || s.enrollment_id || ':mail:0')
            FROM journeys_enrollmentstep s
            LEFT JOIN messaging_message m ON m.id = (s.detail ->> 'message')::bigint
            WHERE s.journey_id = %s AND s.kind = 'sent'""", [journey.pk])
        sent, enrollments, pointing = cursor.fetchone()
        assert sent == enrollments == pointing == ENROLLMENTS, ("one sent step each, at its message",
                                                                sent, enrollments, pointing)
        cursor.execute("SELECT kind, count(*) FROM journeys_enrollmentstep WHERE journey_id = %s GROUP BY kind",
                       [journey.pk])
        kinds = dict(cursor.fetchall())
        assert kinds == {"entered": 1, "sent": ENROLLMENTS}, kinds
