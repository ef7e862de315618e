"""A supervised loop writing a row a second rides out three real outages.

Stopped server, blackholed network (chaos proxy), terminated sessions: each is
logged as exactly one ``[DB_DOWN]`` and one ``[DB_RECOVERED]``, and the loop is
writing again within a second of the database coming back (row timestamps are
the server's ``clock_timestamp()``).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import outlast
from outlast.supervise import Supervisor

WAIT = 30.0
RESUME_WITHIN = 1.0


@contextlib.contextmanager
def _deadline(conn: psycopg.Connection[Any], seconds: float) -> Iterator[None]:
    """Shut the socket down if a statement outlives `seconds`.

    Through a blackholed proxy the TCP link stays healthy (the proxy's kernel
    acknowledges every byte), so keepalives and tcp_user_timeout cannot fire;
    only a client-side deadline ends the wait for a reply that never comes.
    """
    sock = socket.socket(fileno=conn.pgconn.socket)  # shares the connection's socket
    try:
        timer = threading.Timer(seconds, lambda: _shutdown(sock))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
            timer.join()
    finally:
        sock.detach()  # give the descriptor back to psycopg: do not close it


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Writer:
    """The loop body: one INSERT a tick on a connection kept between ticks."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None
        self.writes: list[float] = []
        self.changed = threading.Condition()

    def __call__(self) -> None:
        if self.conn is None:
            self.conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=2,
                keepalives=1,
                keepalives_idle=1,
                keepalives_interval=1,
                keepalives_count=2,
                tcp_user_timeout=2000,
            )
        conn = self.conn
        try:
            with _deadline(conn, 2.0):
                conn.execute("INSERT INTO beats DEFAULT VALUES")
        except BaseException:
            self.conn = None
            conn.close()
            raise
        with self.changed:
            self.writes.append(time.time())
            self.changed.notify_all()

    def wait_for_write_after(self, moment: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(w > moment for w in self.writes), WAIT)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _first_row_after(dsn: str, moment: float) -> float:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM min(at))::float8 FROM beats WHERE at > to_timestamp(%s)",
            (moment,),
        ).fetchone()
    assert row is not None and row[0] is not None
    return float(row[0])


def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.destructive
def test_a_loop_keeps_writing_through_three_outages(
    pg_control: Any, pg_database: Any, pg_proxy: Any, db_outage: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    direct = pg_database.dsn()
    with psycopg.connect(direct) as conn:
        conn.execute(
            "CREATE TABLE beats (id bigserial PRIMARY KEY,"
            " at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    guard = outlast.Guard(
        "beats",
        retry=outlast.Retry(backoff=outlast.Backoff(initial=0.1, cap=0.5)),
        breaker=outlast.Breaker(open_for=0.2, max_open_for=0.5),
    )
    writer = Writer(pg_proxy.dsn(pg_database.name))
    sync_beats = outlast.loop(every=1.0, guard=guard, name="sync_beats")(writer)

    def lines(tag: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(tag) and "op=sync_beats" in r.getMessage()
        ]

    def down_logged(n: int) -> Callable[[], bool]:
        return lambda: len(lines("[DB_DOWN]")) >= n

    sup = Supervisor("beats")
    sync_beats.start(sup, heartbeat=10)
    try:
        writer.wait_for_write_after(time.time() + 1.5)  # a few normal ticks first

        # 1. The server stops.
        pg_control.stop()
        _until(down_logged(1))
        time.sleep(1.5)  # a real outage: several failed ticks
        pg_control.start()
        back = time.time()
        writer.wait_for_write_after(back)
        assert _first_row_after(direct, back) - back < RESUME_WITHIN

        # 2. The network swallows everything (existing link and new connects).
        with db_outage("blackhole"):
            _until(down_logged(2))
            time.sleep(1.5)
            back = time.time()
        writer.wait_for_write_after(back)
        assert _first_row_after(direct, back) - back < RESUME_WITHIN

        # 3. Every session is terminated (57P01); the server itself stays up,
        #    so "back" is when the loop noticed.
        before = time.time()
        with db_outage("terminate"):
            pass
        _until(down_logged(3))
        noticed = next(
            r.created
            for r in reversed(caplog.records)
            if r.getMessage().startswith("[DB_DOWN] op=sync_beats")
        )
        assert noticed > before
        writer.wait_for_write_after(noticed)
        assert _first_row_after(direct, noticed) - noticed < RESUME_WITHIN
        _until(lambda: len(lines("[DB_RECOVERED]")) >= 3)

        assert sup.status()["sync_beats"].state == "running"
        assert sup.status()["sync_beats"].restarts == 0
    finally:
        assert sup.stop(timeout=WAIT) == []
        writer.close()

    downs, recoveries = lines("[DB_DOWN]"), lines("[DB_RECOVERED]")
    assert len(downs) == 3, downs
    assert len(recoveries) == 3, recoveries
    assert all("downtime=" in line for line in recoveries)
    assert not lines("[LOOP_ERROR]")
    assert not [r for r in caplog.records if r.getMessage().startswith("[THREAD_CRASH]")]
