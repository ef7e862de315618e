"""The Guard against the real embedded PostgreSQL, stopped and started under it."""

from __future__ import annotations

import logging
import re
import time

import psycopg
import pytest

import outlast
from outlast import Backoff, Breaker, DatabaseUnavailable, Retry


@pytest.mark.destructive
def test_a_guarded_psycopg_query_rides_out_a_real_outage(
    pg_control, pg_database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    connects = 0

    def fetch_one() -> int:
        nonlocal connects
        connects += 1
        with psycopg.connect(pg_database.dsn(), connect_timeout=3) as conn:
            row = conn.execute("SELECT 1").fetchone()
            assert row is not None
            return int(row[0])

    guard = outlast.Guard(
        "main",
        retry=Retry(attempts=4, timeout=5.0, backoff=Backoff(initial=0.05, cap=0.2)),
        breaker=Breaker(failure_threshold=4, open_for=0.5, max_open_for=2.0),
    )
    assert guard.call(fetch_one) == 1

    pg_control.stop()
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as info:
        guard.call(fetch_one)
    assert time.monotonic() - started < 5.0 + 3.0  # the deadline, plus one connect at most
    assert connects == 1 + 4
    assert info.value.fault is not None and info.value.fault.reason == "connection_refused"
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    assert info.value.retry_after > 0
    down_lines = [r.getMessage() for r in caplog.records if "[DB_DOWN]" in r.getMessage()]
    assert len(down_lines) == 3
    assert re.fullmatch(
        r"\[DB_DOWN\] op=.*fetch_one try=1/4 sleep=[0-9.]+s reason=connection_refused",
        down_lines[0],
    )
    assert guard.breaker_state == "open" and guard.state.down

    # Open: callers fail at once, without a single connection attempt.
    before = connects
    t0 = time.perf_counter()
    for _ in range(200):
        with pytest.raises(DatabaseUnavailable):
            guard.call(fetch_one)
        with pytest.raises(DatabaseUnavailable):
            guard.check()
    assert connects == before
    assert (time.perf_counter() - t0) / 400 < 0.001  # generous; benchmarks/ has the real figure

    pg_control.start()
    time.sleep(guard.retry_after)
    assert guard.call(fetch_one) == 1  # the half-open probe
    assert guard.breaker_state == "closed"
    state = guard.state
    assert state.up and state.outages == 1 and state.downtime > 0
    assert [guard.call(fetch_one) for _ in range(5)] == [1] * 5

    messages = [r.getMessage() for r in caplog.records]
    recovered = [m for m in messages if m.startswith("[DB_RECOVERED]")]
    assert len(recovered) == 1
    match = re.fullmatch(
        r"\[DB_RECOVERED\] op=.*fetch_one after (\d+) attempts downtime=([0-9.]+)s", recovered[0]
    )
    assert match is not None and int(match[1]) == 5 and float(match[2]) > 0
    assert any(m.startswith("[BREAKER_OPEN] guard=main for=0.5s") for m in messages)
    assert any(m.startswith("[BREAKER_CLOSED] guard=main") for m in messages)
    dsn_secret = pg_database.dsn()
    assert not any(dsn_secret in m or "SELECT 1" in m for m in messages)
