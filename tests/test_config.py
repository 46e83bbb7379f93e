"""Settings from the environment: database URLs, the generated secret key, SQLite's WAL mode."""

from __future__ import annotations

import os
import stat

import pytest
from django.db import connection

from leadflow import config


def test_sqlite_url(tmp_path):
    db = config.parse_database_url(f"sqlite:///{tmp_path}/sub/dir/lf.sqlite3")
    assert db["ENGINE"] == "django.db.backends.sqlite3"
    assert db["NAME"] == f"{tmp_path}/sub/dir/lf.sqlite3"
    assert (tmp_path / "sub" / "dir").is_dir(), "the data folder is created"
    assert "journal_mode=WAL" in db["OPTIONS"]["init_command"]
    assert db["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


def test_postgres_url():
    db = config.parse_database_url("postgresql://lf%40user:p%3Ass@db.internal:6543/leadflow?sslmode=require")
    assert db["ENGINE"] == "django.db.backends.postgresql"
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == \
        ("lf@user", "p:ss", "db.internal", "6543", "leadflow")
    assert db["OPTIONS"] == {"sslmode": "require", "options": "-c jit=off"}
    own = config.parse_database_url("postgresql://db.internal/leadflow?options=-c%20work_mem%3D64MB")
    assert own["OPTIONS"] == {"options": "-c work_mem=64MB"}  # the operator's own options win


def test_postgres_connections_run_without_jit(db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL setting")
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "off"


@pytest.mark.parametrize("url,message", [
    ("mysql://root@localhost/lf", "unsupported scheme"),
    ("sqlite://relative/path.db", "sqlite:///ABSOLUTE/PATH"),
    ("sqlite:///", "names no file"),
])
def test_bad_urls_are_clear_errors(url, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse_database_url(url)


def test_default_database_lives_in_the_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("LEADFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("LEADFLOW_DATA_DIR", str(tmp_path / "lf"))
    assert config.database_url() == f"sqlite:///{tmp_path}/lf/leadflow.sqlite3"


def test_secret_key_is_generated_once_and_private(monkeypatch, tmp_path):
    monkeypatch.delenv("LEADFLOW_SECRET_KEY", raising=False)
    monkeypatch.setenv("LEADFLOW_DATA_DIR", str(tmp_path))
    first = config.secret_key()
    assert len(first) > 40 and config.secret_key() == first
    mode = stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode)
    assert mode == 0o600
    monkeypatch.setenv("LEADFLOW_SECRET_KEY", "from-env")
    assert config.secret_key() == "from-env"


def test_env_int_names_the_variable(monkeypatch):
    monkeypatch.setenv("LEADFLOW_SHARDS", "many")
    with pytest.raises(config.ConfigError, match="LEADFLOW_SHARDS must be a whole number"):
        config.env_int("LEADFLOW_SHARDS", 16)


@pytest.mark.django_db
def test_sqlite_runs_in_wal_mode():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite-only: the PostgreSQL run has no journal mode")
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0].lower() == "wal"


def test_smtp_url_forms_and_errors():
    assert config.parse_smtp_url("") is None
    assert config.parse_smtp_url("smtp://mail%40acme:p%2Fss@relay.example.com:587") == {
        "host": "relay.example.com", "port": 587, "user": "mail@acme", "password": "p/ss", "ssl": False}
    assert config.parse_smtp_url("smtps://relay.example.com") == {
        "host": "relay.example.com", "port": 465, "user": "", "password": "", "ssl": True}
    assert config.parse_smtp_url("smtp://localhost")["port"] == 25
    for bad in ("http://relay.example.com", "relay.example.com:25", "smtp://"):
        with pytest.raises(config.ConfigError, match="LEADFLOW_SMTP_URL"):
            config.parse_smtp_url(bad)


def test_leadflow_smtp_url_becomes_the_default_sending_server(tmp_path):
    """From the environment to the server a blank sending-server URL means, in a fresh process."""
    import subprocess
    import sys

    script = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'leadflow.settings'; django.setup(); "
              "from leadflow.messaging import smtp; c = smtp.default_config(); "
              "print(c.host, c.port, c.user, c.password, c.implicit_tls, c.timeout, c.file_path or '-')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_")}
    env.update(LEADFLOW_DATA_DIR=str(tmp_path), LEADFLOW_SECRET_KEY="x" * 40,
               LEADFLOW_SMTP_URL="smtps://mailer:s%3Acret@relay.example.com:2465?timeout=7")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["relay.example.com", "2465", "mailer", "s:cret", "True", "7.0", "-"]
    del env["LEADFLOW_SMTP_URL"]
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == str(tmp_path / "sent-mail"), "without it, messages are files in the data folder"
