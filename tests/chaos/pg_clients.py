"""The four real PostgreSQL clients of the fault matrix behind one small interface.

`connect(client, proxy)` opens a session through the proxy with psycopg 3,
psycopg2, asyncpg or `psql` (a long-lived psql process fed on stdin, so a
fault can hit a live psql session too). A session runs one statement at a
time: `value(sql)` returns the first column of the first row as text,
`execute(sql)` returns when the statement is done. Drivers raise their own
exceptions; a psql session raises `PsqlExit` (exit code and stderr) when the
process ends.

`Pending` runs a call on a thread so a test can show a hang: its `wait(t)`
returning False is the client-side timeout firing.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg
import psycopg2

import outlast
from outlast.testing._chaos_fixtures import ProxiedServer

CLIENTS = ("psycopg", "psycopg2", "asyncpg", "psql")
DRIVERS = CLIENTS[:3]
_DONE = "__pg_clients_done__"


class PsqlExit(Exception):
    """The psql process ended (its exit code and stderr)."""

    def __init__(self, returncode: int, stderr: str) -> None:
        super().__init__(f"psql exited with {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Session:
    """One open connection of one client."""

    client = ""

    def value(self, sql: str) -> str:
        raise NotImplementedError

    def execute(self, sql: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Psycopg(Session):
    client = "psycopg"

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)

    def value(self, sql: str) -> str:
        row = self.conn.execute(sql).fetchone()
        assert row is not None
        return str(row[0])

    def execute(self, sql: str) -> None:
        self.conn.execute(sql)

    def close(self) -> None:
        self.conn.close()


class _Psycopg2(Session):
    client = "psycopg2"

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def value(self, sql: str) -> str:
        with self.conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
        assert row is not None
        return str(row[0])

    def execute(self, sql: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(sql)

    def close(self) -> None:
        self.conn.close()


class _Asyncpg(Session):
    """An asyncpg connection on a private event loop, driven synchronously."""

    client = "asyncpg"

    def __init__(self, proxy: ProxiedServer, dbname: str, timeout: float) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.conn = self.loop.run_until_complete(
                asyncpg.connect(
                    host=proxy.host,
                    port=proxy.port,
                    user=proxy.server.user,
                    database=dbname,
                    timeout=timeout,
                )
            )
        except BaseException:
            _close_loop(self.loop)
            raise

    def value(self, sql: str) -> str:
        return str(self.loop.run_until_complete(self.conn.fetchval(sql)))

    def execute(self, sql: str) -> None:
        self.loop.run_until_complete(self.conn.execute(sql))

    def close(self) -> None:
        if not self.loop.is_closed():
            self.conn.terminate()
            _close_loop(self.loop)


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # Closing transports finish on the next iterations; a loop closed before
    # them leaves sockets for the garbage collector (a ResourceWarning).
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()


class _Psql(Session):
    """A psql process reading statements from a pipe (``ON_ERROR_STOP``, unaligned)."""

    client = "psql"

    def __init__(self, proxy: ProxiedServer, dbname: str, timeout: float) -> None:
        env = {**os.environ, "PGCONNECT_TIMEOUT": str(int(timeout))}
        self.proc = subprocess.Popen(
            [str(proxy.server.bin_dir / "psql"), "-X", "-w", "-qAt", "-v", "ON_ERROR_STOP=1"]
            + ["-d", proxy.dsn(dbname)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        # psql reads its script only once connected: the echo is the connect's answer.
        self._send(f"\\echo {_DONE}")
        self._line()

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._died()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self._died()
        return line.rstrip("\n")

    def _died(self) -> None:
        returncode = self.proc.wait(30)
        assert self.proc.stderr is not None
        stderr = self.proc.stderr.read()
        self.close()
        raise PsqlExit(returncode, stderr)

    def value(self, sql: str) -> str:
        self._send(sql.rstrip(";") + ";")
        return self._line().split("|", 1)[0]

    def execute(self, sql: str) -> None:
        self._send(sql.rstrip(";") + ";")
        self._send(f"\\echo {_DONE}")
        while self._line() != _DONE:
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass


def connect(
    client: str, proxy: ProxiedServer, *, dbname: str = "postgres", timeout: float = 10
) -> Session:
    """A session of `client` through `proxy` (connect timeout `timeout` seconds)."""
    if client == "psycopg":
        return _Psycopg(proxy.dsn(dbname, connect_timeout=int(timeout)))
    if client == "psycopg2":
        return _Psycopg2(proxy.dsn(dbname, connect_timeout=int(timeout)))
    if client == "asyncpg":
        return _Asyncpg(proxy, dbname, timeout)
    if client == "psql":
        return _Psql(proxy, dbname, timeout)
    raise ValueError(f"unknown client {client!r}")


def failed_connect(client: str, proxy: ProxiedServer, *, timeout: float = 10) -> BaseException:
    """The error a new connection of `client` ends with (fails the test if it connects)."""
    try:
        session = connect(client, proxy, timeout=timeout)
    except Exception as exc:
        return exc
    session.close()
    raise AssertionError(f"{client} connected through the fault")


def reason_of(exc: BaseException) -> str | None:
    fault = outlast.classify(exc)
    return None if fault is None else fault.reason


def assert_fails(
    client: str,
    exc: BaseException,
    *,
    reason: str | set[str],
    psql: str,
    psql_code: int = 2,
) -> None:
    """A driver error classified as `reason`, or psql's exit `psql_code` with `psql` in stderr.

    `psql` is a regular expression searched in psql's stderr.
    """
    if client == "psql":
        assert isinstance(exc, PsqlExit), repr(exc)
        assert exc.returncode == psql_code, exc
        assert re.search(psql, exc.stderr), exc.stderr
        return
    assert not isinstance(exc, PsqlExit)
    reasons = {reason} if isinstance(reason, str) else reason
    assert reason_of(exc) in reasons, (repr(exc), reason_of(exc))


class Pending:
    """`call()` on a daemon thread; `wait(timeout)` is a client-side timeout."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._done = threading.Event()
        self._call = call
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    def outcome(self, timeout: float = 30) -> Any:
        """The call's result (re-raising its error) once it finished."""
        assert self._done.wait(timeout), "the call never finished"
        if self.error is not None:
            raise self.error
        return self.result

    def failure(self, timeout: float = 30) -> BaseException:
        assert self._done.wait(timeout), "the call never finished"
        assert self.error is not None, f"the call succeeded: {self.result!r}"
        return self.error


def wait_for_query(proxy: ProxiedServer, marker: str, timeout: float = 30) -> int:
    """Poll the server directly (not through the proxy) until a query with `marker` runs.

    Returns the backend's pid.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(proxy.server.dsn(), autocommit=True) as direct:
        while time.monotonic() < deadline:
            row = direct.execute(
                "select pid from pg_stat_activity"
                " where state = 'active' and query like %s and pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.01)
    raise AssertionError(f"query {marker!r} never started")


def in_flight(
    proxy: ProxiedServer, session: Session, marker: str, seconds: float
) -> tuple[Pending, int]:
    """Start ``select 'marker', pg_sleep(seconds)``; return once the server runs it.

    Returns the pending call and the pid of the backend that runs it.
    """
    pending = Pending(lambda: session.value(f"select '{marker}', pg_sleep({seconds})"))
    return pending, wait_for_query(proxy, marker)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started
