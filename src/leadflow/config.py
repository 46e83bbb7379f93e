"""Reading LeadFlow's environment: the database URL, the data folder and the secret key.

Kept free of Django imports so the CLI can use it before Django is set up.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit


class ConfigError(ValueError):
    """A LeadFlow environment variable holds a value that cannot be used."""


def data_dir() -> Path:
    """The folder for the embedded database and generated secrets (created on demand)."""
    raw = os.environ.get("LEADFLOW_DATA_DIR")
    path = Path(raw).expanduser() if raw else Path.home() / ".local" / "share" / "leadflow"
    return path.resolve()


def default_database_url() -> str:
    return f"sqlite:///{data_dir() / 'leadflow.sqlite3'}"


def database_url() -> str:
    return os.environ.get("LEADFLOW_DATABASE_URL") or default_database_url()


def parse_database_url(url: str) -> dict:
    """Turn `sqlite:///ABS/PATH` or `postgresql://user:pass@host:port/db` into Django settings."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        # sqlite:///abs/path -> netloc "", path "/abs/path"
        path = unquote(parts.path)
        if parts.netloc:
            raise ConfigError(f"LEADFLOW_DATABASE_URL: use sqlite:///ABSOLUTE/PATH, not {url!r}")
        if not path or path == "/":
            raise ConfigError("LEADFLOW_DATABASE_URL: the sqlite URL names no file")
        if path != "/:memory:":
            path = "/" + path.lstrip("/")  # sqlite:///tmp/x and sqlite:////tmp/x both mean /tmp/x
        else:
            path = ":memory:"
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": path,
            "OPTIONS": {
                # IMMEDIATE transactions avoid lock-upgrade deadlocks between processes.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": (
                    "PRAGMA journal_mode=WAL;"
                    "PRAGMA synchronous=NORMAL;"
                    "PRAGMA foreign_keys=ON;"
                ),
            },
            "TEST": {"NAME": os.environ.get("LEADFLOW_TEST_SQLITE_NAME") or None},
        }
    if scheme in {"postgres", "postgresql", "postgresql+psycopg", "pgsql"}:
        options = dict(parse_qsl(parts.query))
        # JIT compilation costs 100-200 ms per query and LeadFlow's queries are short, index-driven
        # ones whose cost estimates (per-contact subplans) look large: it only ever slowed them.
        options.setdefault("options", "-c jit=off")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "leadflow",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": int(os.environ.get("LEADFLOW_DB_CONN_MAX_AGE", "60")),
            "CONN_HEALTH_CHECKS": True,
            "OPTIONS": options,
        }
    raise ConfigError(
        f"LEADFLOW_DATABASE_URL: unsupported scheme {parts.scheme!r}; "
        "use sqlite:///ABSOLUTE/PATH or postgresql://USER:PASS@HOST:PORT/DB"
    )


def secret_key() -> str:
    """LEADFLOW_SECRET_KEY, or a random key generated once and kept in the data folder."""
    key = os.environ.get("LEADFLOW_SECRET_KEY")
    if key:
        return key
    folder = data_dir()
    path = folder / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key)
    return key


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from exc


def parse_smtp_url(url: str) -> dict | None:
    """`smtp://user:pass@host:port` (STARTTLS when offered) or `smtps://…` (implicit TLS)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError(f"LEADFLOW_SMTP_URL: use smtp://USER:PASS@HOST:PORT or smtps://…, not {url!r}")
    ssl = parts.scheme == "smtps"
    return {"host": parts.hostname, "port": parts.port or (465 if ssl else 25),
            "user": unquote(parts.username or ""), "password": unquote(parts.password or ""), "ssl": ssl}
