"""Journeys as code through the `leadflow` command: apply files and folders (twice is harmless,
invalid files change nothing), export and apply back, lint, list, simulate, and `tick` running a
nurture to a real SMTP server on loopback in simulated time."""

from __future__ import annotations

import datetime as dt
import email.utils
import io
import json
import os
import subprocess
import sys

import pytest
import yaml
from django.core.management import CommandError, call_command

from leadflow.cli import VERBS
from leadflow.journeys.models import Enrollment, Journey, JourneyVersion
from leadflow.journeys.services import journey_enroll
from leadflow.messaging.sending import messaging_settings_update, sending_server_create
from leadflow.tracking.ingest import events_append

from journey_helpers import apply, contact_of, identify, iso, send, template, track
from smtp_sink import dispatching_to_sink

pytestmark = pytest.mark.django_db

UTC = dt.timezone.utc

NURTURE = """\
name: Ebook nurture
description: Thanks on day 2, a video on day 5.
triggers:
  - event: Asset Downloaded
    where: [{field: properties.magnet_slug, op: eq, value: retirement-guide}]
reentry: once
goals:
  - {name: Booked a demo, event: Demo Requested}
nodes:
  - {id: wait-2d, type: wait, days: 2, next: thanks}
  - {id: thanks, type: send_email, template: thanks, topic: marketing, next: wait-3d}
  - {id: wait-3d, type: wait, days: 3, next: video}
  - {id: video, type: send_email, template: video, topic: marketing}
"""


def leadflow(*argv) -> tuple[int, str, str]:
    """Run `leadflow ARGV` in this process as `leadflow.cli` does (the same management command):
    (exit status, stdout, stderr). `main` itself closes the database connection when it is done,
    which a test's transaction cannot survive; the first test runs it in a process of its own."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*argv, stdout=out, stderr=err)
        code = 0
    except CommandError as exc:
        err.write(str(exc))
        code = 1  # what `leadflow` exits with on a CommandError
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def content(ws):
    template(ws, "thanks", subject="Thanks for reading, {{ contact.first_name }}")
    template(ws, "video", subject="A client's story")


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "journeys"
    path.mkdir()
    (path / "ebook-nurture.yaml").write_text(NURTURE)
    return path


@pytest.mark.skipif(os.environ.get("LEADFLOW_TEST_DATABASE_URL", "").startswith("postgres"),
                    reason="runs the command on a SQLite file of its own; once is enough")
def test_the_command_line_verbs_run_in_their_own_process(tmp_path):
    assert {"journeys", "tick", "demo"} <= set(VERBS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(LEADFLOW_DATA_DIR=str(tmp_path / "data"), LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path}/cli.sqlite3",
               LEADFLOW_SECRET_KEY="cli-test-secret", DJANGO_SETTINGS_MODULE="leadflow.settings")

    def run(*args):
        done = subprocess.run([sys.executable, "-m", "leadflow", *args], env=env, capture_output=True, text=True,
                              timeout=300)
        return done.returncode, done.stdout, done.stderr

    code, out, _ = run("--help")
    assert code == 0 and "journeys" in out and "tick" in out
    assert run("migrate")[0] == 0
    assert run("workspaces", "create", "Acme", "--slug", "acme")[0] == 0
    tagging = tmp_path / "tagging.yaml"
    tagging.write_text("name: Tagging\ntriggers: [{event: Signed Up}]\n"
                       "nodes: [{id: wait, type: wait, days: 1, next: tag}, {id: tag, type: tag, add: [new]}]\n")
    code, out, _ = run("journeys", "apply", str(tagging))
    assert code == 0 and "created   tagging  version 1, live" in out
    code, out, _ = run("journeys", "apply", str(tagging), "--workspace", "acme")
    assert code == 0 and "unchanged tagging" in out
    tagging.write_text("name: Tagging\ntriggers: [{event: Signed Up}]\nnodes: [{id: x, type: wait}]\n")
    code, out, err = run("journeys", "lint", str(tagging))
    assert code == 1 and "error: nodes[0]: a wait needs `days`, `hours` or `minutes` greater than 0 [invalid]" in out
    code, out, err = run("journeys", "apply", str(tagging))
    assert code == 1 and "tagging.yaml: nodes[0]: a wait needs `days`, `hours` or `minutes` greater than 0" in err
    code, out, _ = run("tick", "--until", "2d")
    assert code == 0 and "ticked from" in out


def test_apply_creates_then_says_unchanged_then_updates(ws, content, folder, frozen_clock):
    code, out, _ = leadflow("journeys", "apply", str(folder))
    assert code == 0, out
    assert "created   ebook-nurture  version 1, live  (ebook-nurture.yaml)" in out
    journey = Journey.objects.get(slug="ebook-nurture")
    assert journey.status == "live" and journey.name == "Ebook nurture", "the slug comes from the file name"
    code, out, _ = leadflow("journeys", "apply", str(folder / "ebook-nurture.yaml"), "--workspace",
                            ws.workspace.slug)
    assert code == 0 and "unchanged ebook-nurture  version 1, live" in out
    assert "0 created, 0 updated, 1 unchanged" in out
    (folder / "ebook-nurture.yaml").write_text(NURTURE.replace("days: 3", "days: 4"))
    code, out, _ = leadflow("journeys", "apply", str(folder))
    assert code == 0 and "updated   ebook-nurture  version 2, live" in out
    assert JourneyVersion.objects.filter(journey=journey).count() == 2


def test_json_files_and_drafts(ws, content, tmp_path, frozen_clock):
    data = yaml.safe_load(NURTURE) | {"slug": "from-json"}
    (tmp_path / "one.json").write_text(json.dumps(data))
    code, out, _ = leadflow("journeys", "apply", str(tmp_path / "one.json"), "--no-publish")
    assert code == 0 and "created   from-json  version 1, not published" in out
    assert Journey.objects.get(slug="from-json").status == "draft"
    code, out, _ = leadflow("journeys", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:4] == ["SLUG", "STATUS", "VERSION", "IN"]
    assert row.split()[:5] == ["from-json", "draft", "-", "0", "never"]


def test_yaml_reads_as_json_would_yes_and_no_keys_times_and_dates_stay_text(ws, content, tmp_path, frozen_clock):
    (tmp_path / "pro.yaml").write_text(
        "name: Pro check\ntriggers: [{manual: true}]\n"
        "nodes:\n"
        "  - {id: check, type: branch, if: {field: traits.plan, op: eq, value: pro}, yes: at-10, no: null}\n"
        "  - {id: at-10, type: wait_until, time: 10:00, next: mark}\n"
        "  - {id: mark, type: update_traits, traits: {renewal_date: 2026-04-15, vip: yes, code: 007, n: 7}}\n")
    code, out, err = leadflow("journeys", "apply", str(tmp_path / "pro.yaml"))
    assert code == 0, err
    stored = Journey.objects.get(slug="pro").version.definition
    assert stored["nodes"][0]["yes"] == "at-10" and "no" not in stored["nodes"][0]
    assert stored["nodes"][1]["time"] == "10:00"
    assert stored["nodes"][2]["traits"] == {"renewal_date": "2026-04-15", "vip": "yes", "code": "007", "n": 7}


def test_a_folder_with_a_stream_applies_the_stream_first(ws, content, tmp_path, frozen_clock):
    (tmp_path / "drip.yaml").write_text(
        "name: Drip\ntriggers: [{manual: true}]\n"
        "nodes: [{id: drip, type: stream, topic: marketing, pools: [{stream: early}], cadence: {every_days: 14}}]\n")
    (tmp_path / "early.yaml").write_text("slug: early\nname: Early stage\n"
                                         "items: [{template: thanks}, {template: video}]\n")
    code, out, err = leadflow("journeys", "apply", str(tmp_path))
    assert code == 0, err
    assert out.index("created   stream early  (early.yaml)") < out.index("created   drip  version 1, live")
    assert "2 created, 0 updated, 0 unchanged" in out
    code, out, _ = leadflow("journeys", "apply", str(tmp_path))
    assert code == 0 and "0 created, 0 updated, 2 unchanged" in out
    code, out, _ = leadflow("journeys", "lint", str(tmp_path))
    assert code == 0 and "skipped early.yaml: a stream" in out and "drip.yaml: no problems found" in out
    (tmp_path / "early.yaml").write_text("slug: early\nname: Early stage\nitems: [{template: nope}]\n")
    code, _, err = leadflow("journeys", "apply", str(tmp_path))
    assert code == 1 and "nothing applied; early.yaml: items[0].template" in err


def test_invalid_files_exit_1_with_the_path_and_apply_nothing(ws, content, folder):
    (folder / "broken.yaml").write_text(NURTURE.replace("days: 2", "days: -2").replace("Ebook", "Broken"))
    code, _, err = leadflow("journeys", "apply", str(folder))
    assert code == 1
    assert "broken.yaml: nodes[0].days: Input should be greater than or equal to 0" in err
    assert not Journey.objects.exists(), "the valid file next to it is not applied either"
    (folder / "broken.yaml").write_text("name: x\nnodes: [\n")
    code, _, err = leadflow("journeys", "apply", str(folder / "broken.yaml"))
    assert code == 1 and "broken.yaml: not valid YAML: line 3" in err
    code, _, err = leadflow("journeys", "apply", str(folder / "nope.yaml"))
    assert code == 1 and "no such file or folder" in err


def test_lint_errors_refuse_the_apply_and_lint_exits_1(ws, folder, frozen_clock):
    template(ws, "thanks")
    code, out, err = leadflow("journeys", "apply", str(folder))
    assert code == 1 and "nothing applied: ebook-nurture has lint errors" in err
    assert "error: nodes[3].template: 'video' sends 'video', but there is no email template" in out
    assert not Journey.objects.exists()
    code, out, err = leadflow("journeys", "lint", str(folder / "ebook-nurture.yaml"))
    assert code == 1 and "ebook-nurture.yaml: 1 finding" in out and "[unknown_template]" in out
    assert "1 error, 0 warnings" in err
    template(ws, "video")
    code, out, _ = leadflow("journeys", "lint", str(folder))
    assert code == 0 and "ebook-nurture.yaml: no problems found" in out
    leadflow("journeys", "apply", str(folder))
    code, out, _ = leadflow("journeys", "lint", "ebook-nurture")
    assert code == 0 and "ebook-nurture (version 1): no problems found" in out
    code, _, err = leadflow("journeys", "lint", "nope")
    assert code == 1 and "no such file, and no journey with that slug" in err


def test_export_then_apply_back_changes_nothing(ws, content, folder, tmp_path, frozen_clock):
    leadflow("journeys", "apply", str(folder))
    apply(ws, {"name": "Welcome", "slug": "welcome", "triggers": [{"manual": True}],
               "nodes": [{"id": "hello", "type": "send_email", "template": "thanks", "topic": "marketing"}]})
    code, out, _ = leadflow("journeys", "export")
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    assert [d["slug"] for d in docs] == ["ebook-nurture", "welcome"]
    assert docs[0]["nodes"][1] == {"id": "thanks", "next": "wait-3d", "type": "send_email", "template": "thanks",
                                   "topic": "marketing"}
    code, out, _ = leadflow("journeys", "export", "welcome", "--format", "json")
    assert code == 0 and json.loads(out)["nodes"][0]["id"] == "hello"
    out_dir = tmp_path / "exported"
    code, out, _ = leadflow("journeys", "export", "--out", str(out_dir))
    assert code == 0 and sorted(p.name for p in out_dir.iterdir()) == ["ebook-nurture.yaml", "welcome.yaml"]
    code, out, _ = leadflow("journeys", "apply", str(out_dir))
    assert code == 0 and "0 created, 0 updated, 2 unchanged" in out
    code, _, err = leadflow("journeys", "export", "nope")
    assert code == 1 and "there is no journey 'nope'" in err


def test_migrate_moves_the_people_waiting_at_a_node(ws, content, folder, frozen_clock):
    leadflow("journeys", "apply", str(folder))
    journey = Journey.objects.get(slug="ebook-nurture")
    send(ws, identify("ann", email="ann@example.com"))
    journey_enroll(journey=journey, contacts=[contact_of(ws, "ann")], actor="test")
    from leadflow.journeys.engine import journeys_run_due

    journeys_run_due(now=frozen_clock.current)
    assert Enrollment.objects.get(journey=journey).node == "wait-2d"
    (folder / "ebook-nurture.yaml").write_text(NURTURE.replace("wait-2d", "pause"))
    code, _, err = leadflow("journeys", "apply", str(folder), "--migrate", "wait-2d")
    assert code == 1 and "write it as OLD_NODE=NEW_NODE" in err
    code, out, _ = leadflow("journeys", "apply", str(folder), "--migrate", "wait-2d=pause")
    assert code == 0 and "updated   ebook-nurture  version 2, live" in out
    moved = Enrollment.objects.get(journey=journey)
    assert moved.node == "pause" and moved.version.number == 2


def test_simulate_prints_the_path_with_dates_and_subjects(ws, content, folder, frozen_clock):
    leadflow("journeys", "apply", str(folder))
    code, out, _ = leadflow("journeys", "simulate", "ebook-nurture", "--traits", "first_name=Ann",
                            "timezone=Europe/Paris", "--event", "0d:Asset Downloaded:magnet_slug=retirement-guide",
                            "--days", "30")
    assert code == 0, out
    assert "a hypothetical person, from 2026-03-02 10:00 CET for 30 days" in out
    assert "2026-03-04 Wed 10:00  day   2.0  sent        thanks: “Thanks for reading, Ann” (thanks)" in out
    assert "2026-03-07 Sat 10:00  day   5.0  sent        video: “A client's story” (video)" in out
    assert out.rstrip().endswith("2 emails")
    assert not Enrollment.objects.exists()
    code, out, _ = leadflow("journeys", "simulate", str(folder / "ebook-nurture.yaml"),
                            "--event", "0d:Asset Downloaded:magnet_slug=retirement-guide",
                            "--event", "3d:Demo Requested")
    assert code == 0 and "converted   thanks: Booked a demo" in out and out.rstrip().endswith("1 email")
    code, _, err = leadflow("journeys", "simulate", "ebook-nurture", "--event", "Demo Requested")
    assert code == 1 and "write it as WHEN:NAME" in err


def test_tick_runs_a_nurture_to_a_real_smtp_server_in_simulated_time(ws, content, folder, frozen_clock):
    with dispatching_to_sink() as sink:
        messaging_settings_update(workspace_id=ws.workspace.pk, from_name="Acme", from_email="news@acme.test",
                                  postal_address="1 Main St, Springfield")
        sending_server_create(workspace=ws.workspace, name="Loopback", url=sink.url, is_default=True,
                              rate_per_second=0)
        leadflow("journeys", "apply", str(folder))
        now = iso(frozen_clock.current)
        result = events_append(workspace=ws.workspace, messages=[
            {"messageId": "m1", "timestamp": now, **identify("ann", email="ann@example.com", first_name="Ann")},
            {"messageId": "m2", "timestamp": now, **track("ann", "Asset Downloaded", magnet_slug="retirement-guide")}])
        assert not result.rejected
        code, out, _ = leadflow("tick", "--until", "4d")
        assert code == 0, out
        assert "ticked from 2026-03-02 09:00 to 2026-03-06 09:00 UTC" in out and "1 emails sent" in out
        code, out, _ = leadflow("tick", "--until", "2026-03-20T00:00Z")
        assert code == 0 and "ticked from 2026-03-06 09:00 to 2026-03-20 00:00 UTC" in out, \
            "a second tick carries on where the first stopped"
        dates = [(email.utils.parsedate_to_datetime(m.message["Date"]).astimezone(UTC), str(m.message["Subject"]))
                 for m in sink.messages]
        assert dates == [(dt.datetime(2026, 3, 4, 9, 0, tzinfo=UTC), "Thanks for reading, Ann"),
                         (dt.datetime(2026, 3, 7, 9, 0, tzinfo=UTC), "A client's story")]
        assert Enrollment.objects.get().state == "completed"
        code, _, err = leadflow("tick", "--until", "2026-03-01T00:00Z")
        assert code == 1 and "is not after the start" in err
        code, _, err = leadflow("tick", "--until", "soon")
        assert code == 1 and "give an ISO date-time" in err


def test_tick_runs_the_periodic_passes_at_least_every_step(ws, content, tmp_path, frozen_clock):
    """A date trigger has no due time of its own: the daily stops let the hourly date pass enter
    the person on the day, 30 days before their renewal."""
    (tmp_path / "renewal.yaml").write_text(
        "name: Renewal\ntriggers: [{date_trait: renewal_date, offset_days: -30}]\n"
        "nodes: [{id: remind, type: send_email, template: video, topic: marketing}]\n")
    send(ws, identify("ann", email="ann@example.com", renewal_date="2026-04-15"))
    assert leadflow("journeys", "apply", str(tmp_path / "renewal.yaml"))[0] == 0
    code, out, _ = leadflow("tick", "--until", "20d", "-v", "2")
    assert code == 0
    entered = Enrollment.objects.get(journey__slug="renewal")
    assert entered.entered_at == dt.datetime(2026, 3, 16, 9, 0, tzinfo=UTC)
    assert "2026-03-16 09:00:00 UTC  1 advanced, 1 dispatched\n" in out, "-v 2 tells each stop's work"
    assert "2026-03-15" not in out, "stops where only the periodic passes ran are not listed"
    code, out, err = leadflow("tick", "--until", "1d", "--step", "0h")
    assert code == 1 and "the step must be longer than 0" in err
