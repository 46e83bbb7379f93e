"""Django settings, all read from LEADFLOW_* environment variables with safe defaults.

See docs/configuration.md for every variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from leadflow import config

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = config.secret_key()
DEBUG = config.env_bool("LEADFLOW_DEBUG")
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("LEADFLOW_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.environ.get("LEADFLOW_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
]
PUBLIC_URL = os.environ.get("LEADFLOW_PUBLIC_URL", "").rstrip("/")
# A mailbox bounces and complaints arrive in: maildir:///PATH, imaps://USER:PASS@HOST/INBOX, pop3s://…
LEADFLOW_BOUNCE_MAILBOX = os.environ.get("LEADFLOW_BOUNCE_MAILBOX", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "leadflow.core",
    "leadflow.contacts",
    "leadflow.tracking",
    "leadflow.consent",
    "leadflow.scoring",
    "leadflow.lifecycle",
    "leadflow.predictive",
    "leadflow.segments",
    "leadflow.messaging",
    "leadflow.journeys",
    "leadflow.web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "leadflow.urls"
WSGI_APPLICATION = "leadflow.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "leadflow.web.context.workspace",
            ],
        },
    },
]

DATABASES = {"default": config.parse_database_url(config.database_url())}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = config.data_dir() / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# Ingestion limits (docs/configuration.md).
LEADFLOW_MAX_EVENT_BYTES = config.env_int("LEADFLOW_MAX_EVENT_BYTES", 32 * 1024)
LEADFLOW_MAX_REQUEST_BYTES = config.env_int("LEADFLOW_MAX_REQUEST_BYTES", 500 * 1024)
LEADFLOW_INGEST_MAX_INFLIGHT = config.env_int("LEADFLOW_INGEST_MAX_INFLIGHT", 64)
LEADFLOW_INGEST_MAX_BACKLOG = config.env_int("LEADFLOW_INGEST_MAX_BACKLOG", 0)
LEADFLOW_TRUST_X_FORWARDED_FOR = config.env_bool("LEADFLOW_TRUST_X_FORWARDED_FOR")
LEADFLOW_SHARDS = config.env_int("LEADFLOW_SHARDS", 16)
LEADFLOW_WORKER_BATCH = config.env_int("LEADFLOW_WORKER_BATCH", 1000)
LEADFLOW_FORM_RATE_LIMIT = config.env_int("LEADFLOW_FORM_RATE_LIMIT", 10)
LEADFLOW_FORM_RATE_WINDOW = config.env_int("LEADFLOW_FORM_RATE_WINDOW", 600)
# Django's own cap on request bodies is replaced by the ingestion limits above.
DATA_UPLOAD_MAX_MEMORY_SIZE = max(LEADFLOW_MAX_REQUEST_BYTES, 2_621_440)
FILE_UPLOAD_MAX_MEMORY_SIZE = 50 * 1024 * 1024

# Email LeadFlow sends itself (sales alerts): LEADFLOW_SMTP_URL, else files in the data folder.
EMAIL_FROM = os.environ.get("LEADFLOW_EMAIL_FROM", "LeadFlow <leadflow@localhost>")
DEFAULT_FROM_EMAIL = EMAIL_FROM
_smtp = config.parse_smtp_url(os.environ.get("LEADFLOW_SMTP_URL", ""))
if _smtp:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST, EMAIL_PORT = _smtp["host"], _smtp["port"]
    EMAIL_HOST_USER, EMAIL_HOST_PASSWORD = _smtp["user"], _smtp["password"]
    EMAIL_USE_SSL = _smtp["ssl"]
    EMAIL_TIMEOUT = 30
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = config.data_dir() / "sent-mail"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LEADFLOW_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
