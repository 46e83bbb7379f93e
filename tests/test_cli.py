"""The `leadflow` command as an operator uses it: separate processes on a real database file."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from leadflow.cli import VERBS


@pytest.fixture
def env(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    environ.update(LEADFLOW_DATA_DIR=str(tmp_path / "data"),
                   LEADFLOW_DATABASE_URL=f"sqlite:///{tmp_path}/cli.sqlite3",
                   LEADFLOW_SECRET_KEY="cli-test-secret", DJANGO_SETTINGS_MODULE="leadflow.settings")
    return environ


def run(env, *args, check=True):
    result = subprocess.run([sys.executable, "-m", "leadflow", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_lists_every_verb_and_each_verb_has_help(env):
    top = run(env, "--help").stdout
    for verb in VERBS:
        assert verb in top
    for verb in ("up", "web", "worker", "migrate", "keys", "users", "workspaces", "import", "process"):
        assert run(env, verb, "--help").stdout.startswith("usage:"), verb
    assert run(env, "frobnicate", check=False).returncode == 2


def test_bad_database_url_is_a_clear_error(env):
    env["LEADFLOW_DATABASE_URL"] = "mysql://nope"
    result = run(env, "migrate", check=False)
    assert result.returncode == 2 and "unsupported scheme 'mysql'" in result.stderr


def test_keys_create_prints_the_key_alone(env):
    run(env, "migrate")
    assert run(env, "workspaces", "create", "Acme", "--slug", "acme").stdout.strip() == "acme"
    write = run(env, "keys", "create", "--kind", "write", "--workspace", "acme").stdout
    secret = run(env, "keys", "create", "--kind", "secret", "--workspace", "acme").stdout
    assert re.fullmatch(r"lfw_[A-Za-z0-9_-]{20,}\n", write)
    assert re.fullmatch(r"lfs_[A-Za-z0-9_-]{20,}\n", secret)
    listing = run(env, "keys", "list", "--workspace", "acme").stdout
    assert write[:10] in listing and secret[:10] in listing and write.strip() not in listing
    run(env, "keys", "revoke", write[:10], "--workspace", "acme")
    assert "revoked" in run(env, "keys", "list", "--workspace", "acme").stdout
    missing = run(env, "keys", "create", "--kind", "write", "--workspace", "nope", check=False)
    assert missing.returncode != 0 and "no workspace with the slug 'nope'" in missing.stderr


def test_keys_create_hook_key(env):
    run(env, "migrate")
    run(env, "workspaces", "create", "Acme", "--slug", "acme")
    hook = run(env, "keys", "create", "--kind", "hook", "--workspace", "acme", "--name", "ses").stdout
    assert re.fullmatch(r"lfh_[A-Za-z0-9_-]{20,}\n", hook)
    listing = run(env, "keys", "list", "--workspace", "acme").stdout
    assert re.search(rf"{re.escape(hook[:10])}…\s+hook\s+active\s+\S+\s+ses", listing)
    assert hook.strip() not in listing
    assert "hook" in run(env, "keys", "create", "--help").stdout
    bad = run(env, "keys", "create", "--kind", "admin", "--workspace", "acme", check=False)
    assert bad.returncode != 0 and "invalid choice: 'admin'" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, what: str, timeout: float = 60.0):
    """Wait for another process to reach a state (readiness polling, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str, headers: dict | None = None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status, resp.read()
    except OSError:
        return None, b""


def test_up_serves_web_api_and_worker_and_stops_on_ctrl_c(env):
    from segment.analytics import Client

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "leadflow", "up", "--port", str(port), "--workers", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C" in line:
                break
        banner = "".join(lines)
        assert f"http://127.0.0.1:{port}/" in banner
        assert f"links in email point to http://127.0.0.1:{port}/" in banner, "absolute links without configuration"
        admin = re.search(r"admin login: (\S+) / (\S+)", banner)
        write_key = re.search(r"write key for workspace 'default': (lfw_\S+)", banner)
        assert admin and write_key, banner
        _wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz")[0] == 200, "the web server")

        client = Client(write_key.group(1), host=f"http://127.0.0.1:{port}", sync_mode=True)
        client.identify(user_id="first-user", traits={"email": "first@example.com"})
        secret = run(env, "keys", "create", "--kind", "secret").stdout.strip()

        def visible():
            status, body = _get(f"http://127.0.0.1:{port}/api/contacts?email=first@example.com",
                                {"Authorization": f"Bearer {secret}"})
            return status == 200 and orjson.loads(body)["items"]

        items = _wait_for(visible, "the worker to build the profile")
        assert items[0]["user_id"] == "first-user"

        # A lead magnet asked for on a hosted form arrives by email (a file in the data folder
        # without LEADFLOW_SMTP_URL), its link absolute on the server's own URL.
        api = f"http://127.0.0.1:{port}/api"
        auth = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
        for method, path, body in [
                ("PATCH", "/email/sending/settings", {"from_name": "Acme", "from_email": "hello@acme.example"}),
                ("POST", "/magnets", {"name": "Pricing guide", "delivery_url": "https://acme.example/p.pdf"}),
                ("POST", "/forms", {"name": "Guide", "slug": "guide", "lead_magnet": "pricing-guide",
                                    "fields": [{"name": "email", "label": "Email", "type": "email"}]})]:
            request = urllib.request.Request(api + path, data=orjson.dumps(body), headers=auth, method=method)
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status in (200, 201)
        form = urllib.parse.urlencode({"email": "zoe@example.org", "lf_aid": "v-1"}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/f/default/guide/", data=form, timeout=10) as resp:
            assert resp.status == 200
        mail_dir = Path(env["LEADFLOW_DATA_DIR"]) / "sent-mail"
        [eml] = _wait_for(lambda: list(mail_dir.glob("*.eml")) if mail_dir.is_dir() else [], "the delivery email")
        mail = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
        assert mail["To"] == "zoe@example.org" and mail["Subject"] == "Your ebook: Pricing guide"
        assert f"http://127.0.0.1:{port}/e/c/" in mail.get_body(preferencelist=("plain",)).get_content()
        status, body = _get(f"http://127.0.0.1:{port}/login/")
        assert status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest
    assert "LeadFlow stopped" in rest

    # A second start creates nothing new and shows no secrets again.
    again = run(env, "manage", "shell", "-c",
                "from leadflow.core.services import bootstrap; print(sorted(bootstrap()))")
    assert again.stdout.strip().splitlines()[-1] == "['workspace_existing']"
