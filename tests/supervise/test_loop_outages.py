"""A supervised loop writing a row a second rides out three real outages.

Stopped server, blackholed network (chaos proxy), terminated sessions: each is
logged as exactly one ``[DB_DOWN]`` and one ``[DB_RECOVERED]``, and the loop is
writing again within a second of the database coming back (row timestamps are
the server's ``clock_timestamp()``). Both twins: a thread loop under a
`Supervisor` and an asyncio loop under an `AsyncSupervisor` (in its own event
loop thread, so the outage script is the same), each on outlast's hardened
psycopg connection, whose client-side statement deadline ends the wait on a
blackholed link (the proxy's kernel acknowledges every byte, so keepalives and
tcp_user_timeout cannot fire).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

import outlast
import outlast.psycopg
from outlast.supervise import AsyncSupervisor, Supervisor

WAIT = 30.0
RESUME_WITHIN = 1.0
# A statement may take 1 s on the server, 2 s in all before the client gives up.
HARDENING = outlast.Hardening(
    statement_timeout=1.0, deadline_grace=1.0, connect_timeout=2.0, ping_timeout=1.0
)


class Writer:
    """The loop body: one INSERT a tick on a connection kept between ticks."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None
        self.writes: list[float] = []
        self.changed = threading.Condition()

    def wrote(self) -> None:
        with self.changed:
            self.writes.append(time.time())
            self.changed.notify_all()

    def __call__(self) -> None:
        if self.conn is None:
            self.conn = outlast.psycopg.connect(self.dsn, preset=HARDENING, autocommit=True)
        try:
            self.conn.execute("INSERT INTO beats DEFAULT VALUES")
        except BaseException:
            conn, self.conn = self.conn, None
            conn.close()
            raise
        self.wrote()

    async def tick(self) -> None:
        if self.conn is None:
            self.conn = await outlast.psycopg.aconnect(self.dsn, preset=HARDENING, autocommit=True)
        try:
            await self.conn.execute("INSERT INTO beats DEFAULT VALUES")
        except BaseException:
            conn, self.conn = self.conn, None
            await conn.close()
            raise
        self.wrote()

    def wait_for_write_after(self, moment: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: any(w > moment for w in self.writes), WAIT)


@contextmanager
def _thread_loop(writer: Writer, guard: outlast.Guard) -> Iterator[Callable[[], Any]]:
    beats = outlast.loop(every=1.0, guard=guard, name="beats")(writer)
    sup = Supervisor("beats")
    beats.start(sup, heartbeat=10)
    try:
        yield lambda: sup.status()["beats"]
    finally:
        assert sup.stop(timeout=WAIT) == []
        if writer.conn is not None:
            writer.conn.close()


@contextmanager
def _asyncio_loop(writer: Writer, guard: outlast.Guard) -> Iterator[Callable[[], Any]]:
    beats = outlast.loop(every=1.0, guard=guard, name="beats")(writer.tick)
    ready, done = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with AsyncSupervisor("beats") as sup:
            beats.start(sup, heartbeat=10)
            box["loop"], box["sup"] = asyncio.get_running_loop(), sup
            ready.set()
            await sup.wait()
            box["stuck"] = await sup.stop(timeout=WAIT)
        if writer.conn is not None:
            await writer.conn.close()

    thread = threading.Thread(target=lambda: (asyncio.run(main()), done.set()), daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    try:
        yield lambda: box["sup"].status()["beats"]
    finally:
        asyncio.run_coroutine_threadsafe(box["sup"].stop(timeout=WAIT), box["loop"]).result(WAIT)
        thread.join(WAIT)
        assert done.is_set() and box["stuck"] == []


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
@pytest.mark.parametrize("twin", ["thread", "asyncio"])
def test_a_loop_keeps_writing_through_three_outages(
    pg_control: Any, pg_database: Any, pg_proxy: Any, db_outage: Any, caplog: Any, twin: str
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

    def lines(tag: str) -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.getMessage().startswith(tag) and "op=beats" in r.getMessage()
        ]

    def down_logged(n: int) -> Callable[[], bool]:
        return lambda: len(lines("[DB_DOWN]")) >= n

    running = _thread_loop if twin == "thread" else _asyncio_loop
    with running(writer, guard) as status:
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
            if r.getMessage().startswith("[DB_DOWN] op=beats")
        )
        assert noticed > before
        writer.wait_for_write_after(noticed)
        assert _first_row_after(direct, noticed) - noticed < RESUME_WITHIN
        _until(lambda: len(lines("[DB_RECOVERED]")) >= 3)

        assert status().state == "running"
        assert status().restarts == 0

    downs, recoveries = lines("[DB_DOWN]"), lines("[DB_RECOVERED]")
    assert len(downs) == 3, downs
    assert len(recoveries) == 3, recoveries
    assert all("downtime=" in line for line in recoveries)
    assert not lines("[LOOP_ERROR]")
    assert not [r for r in caplog.records if r.getMessage().startswith("[THREAD_CRASH]")]
