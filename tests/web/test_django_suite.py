"""Django's own test runner on a tiny project (``django_suite``): `TestCase`, `atomic()`,
``ATOMIC_REQUESTS`` and SQLite, as users' test suites meet outlast.

The documented write path, ``runtime().transaction(connection, fn)``, runs in
a savepoint inside an enclosing ``atomic()`` block (a ``TestCase``,
``ATOMIC_REQUESTS``), commits a transaction of its own outside one, and fails
at once with a clear `ConfigurationError` on SQLite; the middleware's COMMIT
guard lets ``on_commit`` hooks run as usual.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SUITE = Path(__file__).resolve().parent / "django_suite"


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.update(env, DJANGO_SETTINGS_MODULE="suite_settings", PYTHONPATH=str(SUITE))
    return subprocess.run(
        [sys.executable, "-m", "django", "test", "suite_app", "-v", "2", "--noinput"],
        cwd=SUITE,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_django_test_suite_on_postgresql(pg_server: Any) -> None:
    url = pg_server.url(f"suite_{os.getpid()}", driver="psycopg").replace("+psycopg", "")
    done = _run({"DATABASE_URL": url})
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "Ran 10 tests" in report and "skipped=2" in report, report


def test_django_test_suite_on_sqlite() -> None:
    done = _run({"SUITE_SQLITE": "1"})
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "Ran 10 tests" in report and "skipped=8" in report, report
