"""Helpers for the migration tests: crowds of real processes started together, and counts.

`Crowd` starts N worker processes (``migrate_worker.py``), waits until each
has imported everything and said ``ready``, then releases them all at once
with one line on their stdin: the race is as tight as the machine allows.
`CliCrowd` starts N ``outlast migrate`` commands and records when each exits
(an entrypoint would ``exec`` the service at that moment). Both kill what is
left when closed, even when a test fails.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
PROJECTS = HERE / "projects"
ALEMBIC_INI = PROJECTS / "alembic_app" / "alembic.ini"
SQL_DIR = PROJECTS / "sql_app"
DJANGO_DIR = PROJECTS / "django_app"
WORKER = HERE / "migrate_worker.py"
ALEMBIC_REVISIONS = ("0001", "0002", "0003", "0004")
SQL_REVISIONS = ("0001", "0002", "0003", "0004")
DJANGO_REVISIONS = (
    "leads.0001_initial",
    "leads.0002_lead_email",
    "leads.0003_call",
    "leads.0004_calls_sid",
)


def base_env(dsn: str, **extra: str) -> dict[str, str]:
    """The environment of a worker: the Django project importable, no role variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OUTLAST_MIGRATE", "RUN_MIGRATIONS", "DATABASE_URL", "OUTLAST_DSN")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(DJANGO_DIR), env.get("PYTHONPATH", "")]).strip(
        os.pathsep
    )
    env["MIGRATE_TEST_DSN"] = dsn
    env["DJANGO_SETTINGS_MODULE"] = "migrate_test_settings"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


@dataclass
class Proc:
    """One child process, its stdout lines (read by a thread) and its stderr file."""

    popen: subprocess.Popen[str]
    stderr: Any
    lines: list[str] = field(default_factory=list)
    exited_at: float | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def start_reader(self) -> None:
        def read() -> None:
            assert self.popen.stdout is not None
            for line in self.popen.stdout:
                with self._cond:
                    self.lines.append(line.rstrip("\n"))
                    self._cond.notify_all()
            self.popen.wait()
            with self._cond:
                self.exited_at = time.time()
                self._cond.notify_all()

        threading.Thread(target=read, daemon=True).start()

    def wait_line(self, predicate: Any, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if predicate(line):
                        return line
                if self.exited_at is not None:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.exited_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def result(self) -> dict[str, Any] | None:
        for line in reversed(self.lines):
            if line.startswith("{"):
                try:
                    parsed: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                return parsed
        return None

    def stderr_text(self) -> str:
        self.stderr.flush()
        self.stderr.seek(0)
        text: str = self.stderr.read()
        return text


class _Group:
    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str], stdin: bool) -> Proc:
        err = tempfile.TemporaryFile("w+")
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=dict(env),
            cwd=str(HERE),
        )
        proc = Proc(popen, err)
        proc.start_reader()
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            if not proc.wait_exit(max(0.0, deadline - time.monotonic())):
                raise AssertionError(
                    f"process {proc.popen.pid} still running after {timeout}s;"
                    f" stderr:\n{proc.stderr_text()[-3000:]}"
                )

    def close(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
        for proc in self.procs:
            try:
                proc.popen.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            for stream in (proc.popen.stdin, proc.popen.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            proc.stderr.close()

    def __enter__(self) -> _Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stderr_of_failures(self) -> str:
        out = []
        for proc in self.procs:
            if proc.popen.returncode not in (0, None):
                out.append(f"--- pid {proc.popen.pid} rc {proc.popen.returncode}")
                out.append(proc.stderr_text()[-2000:])
        return "\n".join(out)


class Crowd(_Group):
    """N ``migrate_worker.py`` processes released at the same moment."""

    def start(self, n: int, mode: str, options: Mapping[str, Any], env: Mapping[str, str]) -> Crowd:
        argv = [sys.executable, str(WORKER), mode, json.dumps(dict(options))]
        for _ in range(n):
            self._spawn(argv, env, stdin=True)
        return self

    def add(self, mode: str, options: Mapping[str, Any], env: Mapping[str, str]) -> Proc:
        return self._spawn(
            [sys.executable, str(WORKER), mode, json.dumps(dict(options))], env, stdin=True
        )

    def wait_ready(self, timeout: float = 60.0, procs: Sequence[Proc] | None = None) -> None:
        deadline = time.monotonic() + timeout
        for proc in procs if procs is not None else self.procs:
            left = max(0.0, deadline - time.monotonic())
            if proc.wait_line(lambda line: line == "ready", left) is None:
                raise AssertionError(
                    f"worker {proc.popen.pid} never got ready:\n{proc.stderr_text()[-3000:]}"
                )

    def go(self, procs: Sequence[Proc] | None = None) -> float:
        """Release the workers (all at once); returns the moment."""
        now = time.time()
        for proc in procs if procs is not None else self.procs:
            assert proc.popen.stdin is not None
            proc.popen.stdin.write("go\n")
            proc.popen.stdin.flush()
        return now

    def results(self) -> list[dict[str, Any]]:
        out = []
        for proc in self.procs:
            result = proc.result()
            assert result is not None, f"no result from {proc.popen.pid}:\n{proc.stderr_text()}"
            result["returncode"] = proc.popen.returncode
            out.append(result)
        return out


class CliCrowd(_Group):
    """N ``outlast migrate`` commands started back to back; their exit times are recorded."""

    def start(self, n: int, args: Sequence[str], env: Mapping[str, str]) -> float:
        argv = [sys.executable, "-m", "outlast", "migrate", *args]
        started = time.time()
        for _ in range(n):
            self._spawn(argv, env, stdin=False)
        return started


def log_counts(dsn: str) -> dict[str, list[str]]:
    """``{revision: [application_name of each application]}`` from the projects' migration_log."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('migration_log') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return {}
        rows = conn.execute("SELECT revision, app FROM migration_log ORDER BY at").fetchall()
    out: dict[str, list[str]] = {}
    for revision, app in rows:
        out.setdefault(revision, []).append(app)
    return out


def advisory_locks(dsn: str) -> list[tuple[Any, ...]]:
    """Every advisory lock on the server, held or awaited."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, classid, objid, objsubid, granted FROM pg_locks"
            " WHERE locktype = 'advisory'"
        ).fetchall()


def spread(values: Sequence[float]) -> str:
    """``min/median/max`` in seconds, for the printed figures."""
    if not values:
        return "-"
    return f"{min(values):.2f}/{statistics.median(values):.2f}/{max(values):.2f}s"


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return value
        time.sleep(interval)


class OutlastLog(logging.Handler):
    """Collects the ``outlast`` logger's messages, surviving ``fileConfig`` in Alembic's env.py.

    pytest's caplog hangs on the root logger, whose handlers ``fileConfig``
    replaces; this handler hangs on ``outlast`` itself.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._lock_messages = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_messages:
            self.messages.append(record.getMessage())

    @property
    def text(self) -> str:
        with self._lock_messages:
            return "\n".join(self.messages)

    def __enter__(self) -> OutlastLog:
        log = logging.getLogger("outlast")
        self._level = log.level
        log.setLevel(logging.INFO)
        log.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        log = logging.getLogger("outlast")
        log.removeHandler(self)
        log.setLevel(self._level)
