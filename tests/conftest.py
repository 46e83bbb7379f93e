"""Shared fixtures: a workspace with keys, the frozen clock, posting to the tracking API."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from django.db import connection

from leadflow.core import clock as clock_module
from leadflow.core.models import Workspace
from leadflow.core.services import api_key_create, workspace_create

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_report_header(config):
    from django.conf import settings

    db = settings.DATABASES["default"]
    return f"leadflow store: {db['ENGINE'].rsplit('.', 1)[-1]} ({db.get('HOST') or db['NAME']})"


def pytest_collection_modifyitems(config, items):
    from django.conf import settings

    on_pg = settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL: set LEADFLOW_TEST_DATABASE_URL (.ci/run does)")
    for item in items:
        if "postgres" in item.keywords and not on_pg:
            item.add_marker(skip_pg)


@dataclass
class WorkspaceKeys:
    workspace: Workspace
    write_key: str
    secret_key: str

    @property
    def basic_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{self.write_key}:".encode()).decode()

    @property
    def bearer(self) -> str:
        return f"Bearer {self.secret_key}"


def make_workspace(name: str = "Acme Marketing") -> WorkspaceKeys:
    ws = workspace_create(name=name)
    _, write = api_key_create(workspace=ws, kind="write")
    _, secret = api_key_create(workspace=ws, kind="secret")
    return WorkspaceKeys(ws, write, secret)


@pytest.fixture
def ws(db) -> WorkspaceKeys:
    return make_workspace()


@pytest.fixture
def other_ws(db) -> WorkspaceKeys:
    return make_workspace("Other Company")


@pytest.fixture
def frozen_clock():
    clock = clock_module.FrozenClock(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.timezone.utc))
    with clock_module.use(clock):
        yield clock


def post_batch(client, keys: WorkspaceKeys | None, messages: list, *, path: str = "/v1/batch",
               body: dict | None = None, gzip_body: bool = False, auth: str | None = None):
    payload = body if body is not None else {"batch": messages}
    raw = orjson.dumps(payload)
    headers = {}
    if auth is not None:
        headers["HTTP_AUTHORIZATION"] = auth
    elif keys is not None:
        headers["HTTP_AUTHORIZATION"] = keys.basic_auth
    if gzip_body:
        raw = gzip.compress(raw)
        headers["HTTP_CONTENT_ENCODING"] = "gzip"
    return client.generic("POST", path, raw, content_type="application/json", **headers)


@pytest.fixture
def process():
    from leadflow.core.pipeline import process_pending

    return process_pending


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def shared_data(relative: str) -> Path:
    """A file from ../shared/data, or a skip with the reason when it is absent (never in CI)."""
    path = SHARED_DATA / relative
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"real data set {relative} not found at {path} (it lives in ../shared/data)")
    return path


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def off_loop(fn):
    """Run database work in a plain thread: Playwright's sync API keeps an event loop running in
    the test's thread, and Django refuses ORM calls there (SynchronousOnlyOperation)."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    def call():
        try:
            return fn()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def log_in(page, base_url: str, username: str, password: str) -> None:
    """Sign in through the login page, as a person would."""
    page.goto(f"{base_url}/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def browser_or_skip():
    """(chromium path, sync_playwright), or a skip with the reason; in CI a failure instead."""
    chromium = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium and sync_playwright:
        return chromium, sync_playwright
    reason = ("chromium is not installed (apt-get install chromium)" if not chromium
              else "playwright is not installed (pip install playwright; never `playwright install`)")
    if IN_CI:
        pytest.fail(f"browser test cannot run in CI: {reason}")
    pytest.skip(reason)
