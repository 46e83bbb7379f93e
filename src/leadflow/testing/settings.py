"""Settings for the test suite.

The store is SQLite unless LEADFLOW_TEST_DATABASE_URL names a PostgreSQL server, in which case
pytest-django creates (and drops) a `test_<name>` database on it. Data and secrets go to a
temporary folder so tests never touch a real installation.
"""

import os
import tempfile

_tmp = tempfile.mkdtemp(prefix="leadflow-test-")
os.environ["LEADFLOW_DATA_DIR"] = _tmp
os.environ.setdefault("LEADFLOW_SECRET_KEY", "test-secret-key-not-for-production")
os.environ["LEADFLOW_DATABASE_URL"] = os.environ.get("LEADFLOW_TEST_DATABASE_URL") or \
    f"sqlite:///{_tmp}/leadflow.sqlite3"
os.environ.setdefault("LEADFLOW_TEST_SQLITE_NAME", f"{_tmp}/test-leadflow.sqlite3")

from leadflow.settings import *  # noqa: E402,F401,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
