"""Twenty processes started together against one server: every migration applied exactly once.

The show-cases of the migration issue, with real processes and a real
PostgreSQL: Alembic (side by side with the naive ``alembic upgrade head``
race that outlast prevents), Django, and plain SQL files through the
``outlast migrate`` command. Each project's migrations record who applied
them in ``migration_log`` inside their own transaction, so a count of one
row per revision is exactly-once, measured by the database itself.
Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

import pytest
from migrate_kit import (
    ALEMBIC_INI,
    ALEMBIC_REVISIONS,
    DJANGO_REVISIONS,
    SQL_DIR,
    SQL_REVISIONS,
    CliCrowd,
    Crowd,
    advisory_locks,
    base_env,
    log_counts,
    spread,
)

from outlast.testing import EmbeddedPostgres

pytestmark = pytest.mark.slow

N = 20
READY_AFTER_HEAD = 2.0  # the bound: every process ready within 2 s of head


def _check_exactly_once(
    results: list[dict[str, Any]], dsn: str, revisions: tuple[str, ...]
) -> dict[str, Any]:
    failures = [r for r in results if r.get("error") or r["returncode"] != 0]
    assert not failures, failures
    counts = log_counts(dsn)
    assert {rev: len(apps) for rev, apps in counts.items()} == dict.fromkeys(revisions, 1)
    applied = [rev for r in results for rev in r["applied"]]
    assert sorted(applied) == sorted(revisions)  # each applied by exactly one process
    assert {r["outcome"] for r in results} <= {"applied", "at_head"}
    head_at = max(r["applied_at"] for r in results if r["applied"])
    lags = [r["ready_at"] - head_at for r in results]
    assert max(lags) <= READY_AFTER_HEAD, spread(lags)
    assert not advisory_locks(dsn), "a lock outlived the run"
    return {
        "leaders": sum(1 for r in results if r["applied"]),
        "lags": lags,
        "head_at": head_at,
    }


def test_twenty_alembic_processes_apply_each_revision_once_unlike_a_naive_race(
    pg_server: EmbeddedPostgres, pg_database: Any
) -> None:
    # Revision 0001 pauses 0.5 s inside its transaction in both runs, so the
    # first process to start is still migrating when the others arrive.
    env = base_env(pg_database.dsn(), MIGRATE_TEST_PAUSE_0001="0.5")
    with Crowd() as crowd:
        crowd.start(
            N,
            "outlast",
            {"runner": "alembic", "config": str(ALEMBIC_INI), "dsn": pg_database.dsn()},
            env,
        )
        crowd.wait_ready(90)
        released = crowd.go()
        crowd.wait_all(120)
        results = crowd.results()
        detail = crowd.stderr_of_failures()
    figures = _check_exactly_once(results, pg_database.dsn(), ALEMBIC_REVISIONS)
    print(
        f"\noutlast.migrate, Alembic, {N} processes: each of {len(ALEMBIC_REVISIONS)} revisions"
        f" applied once ({figures['leaders']} leader), 0 errors; head"
        f" {figures['head_at'] - released:.2f}s after the release; ready after head"
        f" (min/median/max) {spread(figures['lags'])}"
    )
    assert detail == ""

    naive_db = f"naive_{os.getpid()}_{int(time.time())}"
    with pg_server.database(naive_db, template="outlast_template"):
        naive_dsn = pg_server.dsn(naive_db)
        with Crowd() as crowd:
            crowd.start(
                N,
                "naive-alembic",
                {"config": str(ALEMBIC_INI), "url": pg_server.url(naive_db, driver="psycopg")},
                base_env(naive_dsn, MIGRATE_TEST_PAUSE_0001="0.5"),
            )
            crowd.wait_ready(90)
            crowd.go()
            crowd.wait_all(120)
            naive = crowd.results()
        counts = log_counts(naive_dsn)
    failed = [r for r in naive if r.get("error")]
    reasons = collections.Counter(
        r.get("reason") or f"{r['error']}: {r['message'][:60]}" for r in failed
    )
    doubled = {rev: len(apps) for rev, apps in counts.items() if len(apps) > 1}
    print(
        f"naive `alembic upgrade head`, {N} processes: {len(failed)} crashed"
        f" ({dict(reasons)}), revisions applied more than once: {doubled or 'none'}"
    )
    # What outlast prevents: processes crash on duplicate objects (or worse).
    assert failed or doubled


def test_twenty_django_processes_apply_each_migration_once(pg_database: Any) -> None:
    with Crowd() as crowd:
        crowd.start(
            N,
            "outlast",
            {"runner": "django", "dsn": pg_database.dsn()},
            base_env(pg_database.dsn()),
        )
        crowd.wait_ready(120)
        released = crowd.go()
        crowd.wait_all(120)
        results = crowd.results()
    figures = _check_exactly_once(results, pg_database.dsn(), DJANGO_REVISIONS)
    print(
        f"\noutlast.migrate, Django, {N} processes: each of {len(DJANGO_REVISIONS)} migrations"
        f" (the last one AddIndexConcurrently, atomic=False) applied once, 0 errors;"
        f" head {figures['head_at'] - released:.2f}s after the release; ready after head"
        f" {spread(figures['lags'])}"
    )


def test_twenty_cli_processes_apply_sql_files_once(pg_database: Any) -> None:
    dsn = pg_database.dsn()
    with CliCrowd() as crowd:
        started = crowd.start(N, ["--dsn", dsn, "--json", "--sql", str(SQL_DIR)], base_env(dsn))
        crowd.wait_all(120)
        results = []
        for proc in crowd.procs:
            result = proc.result()
            assert result is not None, proc.stderr_text()
            assert proc.exited_at is not None
            result["returncode"] = proc.popen.returncode
            result["exited_at"] = proc.exited_at
            results.append(result)
        logs = [proc.stderr_text() for proc in crowd.procs]
    failures = [r for r in results if r["returncode"] != 0]
    assert not failures, failures
    counts = log_counts(dsn)
    assert {rev: len(apps) for rev, apps in counts.items()} == dict.fromkeys(SQL_REVISIONS, 1)
    assert sorted(rev for r in results for rev in r["applied"]) == list(SQL_REVISIONS)
    leader_log = next(log for log in logs if "[MIGRATION] acquired" in log)
    for word in ("acquired", "applied revision=0004", "released"):
        assert f"[MIGRATION] {word}" in leader_log
    assert sum("[MIGRATION] skipped reason=at_head" in log for log in logs) >= 1
    # `ready_at`: when the command knew the schema was there (it exits right after,
    # and an entrypoint's `&& exec` starts the service). Commands are not released
    # together here: one that was still importing at head counts from its start.
    head_at = max(r["ready_at"] for r in results if r["applied"])
    lags = [r["ready_at"] - max(head_at, r["started_at"]) for r in results]
    waiting = [r["ready_at"] - head_at for r in results if r["started_at"] < head_at]
    exits = [r["exited_at"] - head_at for r in results]
    print(
        f"\noutlast migrate --sql, {N} commands: each of {len(SQL_REVISIONS)} files applied"
        f" once (0004: CREATE INDEX CONCURRENTLY), 0 errors; head {head_at - started:.2f}s"
        f" after the first start; {len(waiting)} were waiting at head and ready after"
        f" {spread(waiting)}; every command ready {spread(lags)} after head or its own start;"
        f" exited {spread(exits)} after head"
    )
    assert max(lags) <= READY_AFTER_HEAD
