"""The leader dies or freezes mid-migration among twenty processes: a new leader finishes.

- SIGKILL: the kernel closes the leader's sockets, the server frees its lock;
  the DDL session may still sit in its statement (a backend notices a dead
  client only when it next talks to it), so the new leader terminates it
  before it migrates (the fence) — the killed step is rolled back and applied
  again, once.
- Frozen: its link blackholed by the chaos proxy *and* the process stopped
  (SIGSTOP), as when a VM or container is paused: nothing reaches the server,
  not even a close (a live process would close its own socket when its
  heartbeat's deadline passes, and the proxy would pass that on), and TCP
  still answers on the proxy's side. Only the lock session's
  ``idle_session_timeout`` (one lease, 10 s, while a live holder heartbeats
  every 2.5 s) frees the lock; the new leader fences the frozen DDL session
  off and finishes. When the leader thaws and its link comes back it finds
  its lock gone and the schema at head.

How long the takeover took is printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from migrate_kit import ALEMBIC_INI, ALEMBIC_REVISIONS, Crowd, base_env, log_counts, wait_for

from outlast.chaos import Proxy
from outlast.testing import EmbeddedPostgres

pytestmark = pytest.mark.slow

N = 20


def _sleeping_ddl(dsn: str) -> tuple[int, str] | None:
    """(backend pid, application_name) of a leader's DDL session inside a pause."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity"
            " WHERE application_name LIKE 'outlast-migrate run %%'"
            " AND state = 'active' AND query LIKE '%%pg_sleep%%'"
        ).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _outcomes(crowd: Crowd) -> list[dict[str, Any]]:
    out = []
    for proc in crowd.procs:
        result = proc.result() or {"pid": proc.popen.pid, "applied": [], "error": "no result"}
        result["returncode"] = proc.popen.returncode
        out.append(result)
    return out


def _exactly_once(dsn: str) -> dict[str, list[str]]:
    counts = log_counts(dsn)
    assert {rev: len(apps) for rev, apps in counts.items()} == dict.fromkeys(
        ALEMBIC_REVISIONS, 1
    ), counts
    return counts


@contextlib.contextmanager
def _resumed_at_exit(crowd: Crowd) -> Iterator[None]:
    """SIGCONT every process on the way out, so a failing test can still kill them."""
    try:
        yield
    finally:
        for proc in crowd.procs:
            if proc.popen.poll() is None:
                os.kill(proc.popen.pid, signal.SIGCONT)


def test_leader_sigkilled_mid_migration_a_new_leader_finishes(pg_database: Any) -> None:
    dsn = pg_database.dsn()
    env = base_env(dsn, MIGRATE_TEST_PAUSE_0003="2")  # 0003 sleeps 2 s in its transaction
    with Crowd() as crowd:
        crowd.start(
            N, "outlast", {"runner": "alembic", "config": str(ALEMBIC_INI), "dsn": dsn}, env
        )
        crowd.wait_ready(120)
        crowd.go()
        found = wait_for(lambda: _sleeping_ddl(dsn), 60)
        assert found, "no leader reached revision 0003"
        _, tag = found
        victim = int(tag.split(":")[-2])  # "outlast-migrate run <key> <host>:<pid>:<tag>"
        assert victim in {p.popen.pid for p in crowd.procs}
        assert log_counts(dsn).keys() == {"0001", "0002"}
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        crowd.wait_all(120)
        results = _outcomes(crowd)
        logs = "\n".join(p.stderr_text() for p in crowd.procs if p.popen.pid != victim)
    survivors = [r for r in results if r["pid"] != victim]
    assert [r["returncode"] for r in results if r["pid"] == victim] == [-signal.SIGKILL]
    assert all(r["returncode"] == 0 for r in survivors), survivors
    counts = _exactly_once(dsn)
    assert tag not in counts["0003"]  # the killed leader's 0003 was rolled back
    finisher = [r for r in survivors if "0003" in r["applied"]]
    assert len(finisher) == 1
    head_at = finisher[0]["applied_at"]
    assert "[MIGRATION] fenced pids=" in logs or "[MIGRATION] acquired" in logs
    lags = [r["ready_at"] - head_at for r in survivors]
    assert max(lags) <= 2.0
    print(
        f"\nleader SIGKILLed inside revision 0003 ({N} processes): a new leader applied"
        f" 0003-0004 (0003 sleeps 2 s) and reached head {head_at - killed_at:.1f}s after the"
        f" kill; every revision applied once; all {len(survivors)} survivors ready within"
        f" {max(lags):.2f}s of head"
    )


def test_leader_frozen_mid_migration_loses_its_lock_and_a_new_leader_proceeds(
    pg_server: EmbeddedPostgres, pg_database: Any
) -> None:
    dsn = pg_database.dsn()
    options = {"runner": "alembic", "config": str(ALEMBIC_INI), "wait": 120}
    with (
        Proxy(listen=("127.0.0.1", 0), upstream=(pg_server.host, pg_server.port)) as proxy,
        Crowd() as crowd,
        _resumed_at_exit(crowd),
    ):
        proxied = pg_server.dsn(pg_database.name, host="127.0.0.1", port=proxy.port)
        # The leader-to-be talks through the proxy and pauses 60 s inside 0002.
        leader = crowd.add(
            "outlast", {**options, "dsn": proxied}, base_env(dsn, MIGRATE_TEST_PAUSE_0002="60")
        )
        crowd.wait_ready(60, [leader])
        crowd.go([leader])
        found = wait_for(lambda: _sleeping_ddl(dsn), 30)
        assert found, "the proxied process never reached revision 0002"
        frozen_ddl, _ = found
        others = [
            crowd.add("outlast", {**options, "dsn": dsn}, base_env(dsn)) for _ in range(N - 1)
        ]
        crowd.wait_ready(120, others)
        crowd.go(others)
        time.sleep(1.0)  # they are polling: the lock is held
        assert log_counts(dsn).keys() == {"0001"}
        proxy.add_fault("blackhole")
        os.kill(leader.popen.pid, signal.SIGSTOP)
        frozen_at = time.time()
        head = wait_for(lambda: "0004" in log_counts(dsn), 45, interval=0.1)
        took = time.time() - frozen_at
        assert head, "no new leader finished within 45 s of the freeze"
        assert took < 30.0
        for proc in others:
            assert proc.wait_exit(30)
        with psycopg.connect(dsn, autocommit=True) as conn:
            gone = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (frozen_ddl,)
            ).fetchone()
        assert gone == (0,)  # the frozen leader's DDL session was fenced off
        # ... and its lock session ended by the server, the only one that could.
        assert "idle-session timeout" in pg_server.log_tail(400)
        proxy.clear()  # the link comes back (the blackholed connections are closed)
        os.kill(leader.popen.pid, signal.SIGCONT)
        assert leader.wait_exit(90)
        results = _outcomes(crowd)
        logs = "\n".join(p.stderr_text() for p in crowd.procs)
        old_log = leader.stderr_text()
    assert all(r["returncode"] == 0 for r in results), [r for r in results if r["returncode"]]
    counts = _exactly_once(dsn)
    # 0001 is the frozen leader's (committed before the freeze); the rest the new leader's.
    assert f":{leader.popen.pid}:" in counts["0001"][0]
    assert all(
        f":{leader.popen.pid}:" not in app for rev in ALEMBIC_REVISIONS[1:] for app in counts[rev]
    )
    new_leader = [r for r in results[1:] if r["applied"]]
    assert [r["applied"] for r in new_leader] == [["0002", "0003", "0004"]]
    # Thawed, the old leader learns that its lock is gone: from its heartbeat
    # (lock_lost) or, when the release comes first, from the release's check.
    assert "[MIGRATION] lock_lost" in old_log or (
        "[MIGRATION] release_failed" in old_log and "reason=not_held" in old_log
    ), old_log[-2000:]
    assert "[MIGRATION] fenced pids=" in logs
    print(
        f"\nleader frozen (blackholed + SIGSTOP) inside revision 0002 ({N} processes): the"
        f" server ended its lock session (idle_session_timeout = lease 10 s) and a new leader"
        f" reached head {took:.1f}s after the freeze; the frozen DDL session was terminated;"
        f" thawed, the old leader found its lock lost and the schema at head"
    )
