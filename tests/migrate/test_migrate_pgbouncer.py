"""Twenty processes through PgBouncer in transaction mode: a clear refusal, or the lease mode.

A session advisory lock taken through a transaction pooler stays on whichever
server connection ran the statement (the Rails and Prisma failure). outlast
refuses such an endpoint for the advisory lock — whether PgBouncer rejects
the session's startup options or silently drops them — and its lease mode
works through it. Each test starts its own PgBouncer in front of ``pg_server``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from migrate_kit import (
    ALEMBIC_INI,
    ALEMBIC_REVISIONS,
    Crowd,
    advisory_locks,
    base_env,
    log_counts,
    spread,
)

import outlast.migrate as migrate
from outlast.testing import EmbeddedPostgres, PgBouncer, pgbouncer_binary

N = 20


def _bouncer(pg_server: Any, *, ignore_options: bool = False, pool_size: int = 10) -> PgBouncer:
    """Transaction pooling with trust auth; ``ignore_options`` drops the startup options."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    ignored = ("extra_float_digits", "options") if ignore_options else ("extra_float_digits",)
    return PgBouncer(
        (pg_server.host, pg_server.port),
        auth_type="trust",
        ignore_startup_parameters=ignored,
        settings={"default_pool_size": pool_size},
    )


@pytest.mark.parametrize(
    "ignore_options", [False, True], ids=["options-refused", "options-dropped"]
)
def test_advisory_lock_refuses_a_transaction_pooler(
    pg_server: EmbeddedPostgres, pg_database: Any, ignore_options: bool
) -> None:
    with _bouncer(pg_server, ignore_options=ignore_options) as bouncer:
        runner = migrate.AlembicRunner(ALEMBIC_INI)
        with pytest.raises(migrate.LockNotSupported) as info:
            migrate.run(runner, dsn=bouncer.dsn(pg_database.name), wait=5)
    message = str(info.value)
    assert "pooler" in message
    assert "lock_dsn" in message and "lease" in message
    assert isinstance(info.value, migrate.MigrationError)
    assert not advisory_locks(pg_database.dsn())
    assert log_counts(pg_database.dsn()) == {}


def test_lock_dsn_lets_the_ddl_go_through_the_pooler(
    pg_server: EmbeddedPostgres, pg_database: Any
) -> None:
    with _bouncer(pg_server) as bouncer:
        status = migrate.run(
            migrate.AlembicRunner(ALEMBIC_INI),
            dsn=bouncer.dsn(pg_database.name),
            lock_dsn=pg_database.dsn(),
            lock="advisory",
        )
    assert status.applied == ALEMBIC_REVISIONS
    assert not advisory_locks(pg_database.dsn())


def test_a_waiting_role_reads_the_schema_through_the_pooler(
    pg_server: EmbeddedPostgres, pg_database: Any
) -> None:
    # The API migrates over a direct connection; the workers wait behind PgBouncer.
    with _bouncer(pg_server) as bouncer:
        pooled = bouncer.dsn(pg_database.name)
        with pytest.raises(migrate.MigrationTimeout, match="4 pending"):
            migrate.run(migrate.AlembicRunner(ALEMBIC_INI), dsn=pooled, role="wait", wait=1)
        migrate.run(migrate.AlembicRunner(ALEMBIC_INI), dsn=pg_database.dsn())
        status = migrate.run(migrate.AlembicRunner(ALEMBIC_INI), dsn=pooled, role="wait", wait=10)
    assert status.outcome == "at_head"


@pytest.mark.slow
def test_twenty_processes_through_pgbouncer(pg_server: EmbeddedPostgres, pg_database: Any) -> None:
    dsn = pg_database.dsn()
    with _bouncer(pg_server, ignore_options=True, pool_size=10) as bouncer:
        pooled = bouncer.dsn(pg_database.name)

        # 1. What a hand-written session lock does through it: stranded.
        with psycopg.connect(pooled, autocommit=True) as naive:
            assert naive.execute("SELECT pg_try_advisory_lock(4242)").fetchone() == (True,)
        stranded = [row for row in advisory_locks(dsn) if row[2] == 4242]
        assert stranded, "the naive lock should outlive its client"
        with psycopg.connect(dsn, autocommit=True) as admin:  # clean up the stranded backend
            admin.execute("SELECT pg_terminate_backend(%s)", (stranded[0][0],))

        # 2. outlast's advisory lock: twenty clear refusals, no lock taken, nothing applied.
        env = base_env(dsn)
        with Crowd() as crowd:
            crowd.start(
                N, "outlast", {"runner": "alembic", "config": str(ALEMBIC_INI), "dsn": pooled}, env
            )
            crowd.wait_ready(90)
            crowd.go()
            crowd.wait_all(90)
            refused = crowd.results()
        assert {r["error"] for r in refused} == {"LockNotSupported"}
        assert all("pooler" in r["message"] for r in refused)
        assert not [row for row in advisory_locks(dsn) if row[2] != 4242]
        assert log_counts(dsn) == {}

        # 3. The lease mode through the same PgBouncer: each revision exactly once.
        with Crowd() as crowd:
            crowd.start(
                N,
                "outlast",
                {"runner": "alembic", "config": str(ALEMBIC_INI), "dsn": pooled, "lock": "lease"},
                env,
            )
            crowd.wait_ready(90)
            released = crowd.go()
            crowd.wait_all(120)
            results = crowd.results()
            detail = crowd.stderr_of_failures()
    assert all(r["returncode"] == 0 for r in results), detail
    assert {rev: len(apps) for rev, apps in log_counts(dsn).items()} == dict.fromkeys(
        ALEMBIC_REVISIONS, 1
    )
    assert sorted(rev for r in results for rev in r["applied"]) == list(ALEMBIC_REVISIONS)
    with psycopg.connect(dsn, autocommit=True) as conn:
        lease = conn.execute(
            "SELECT released_at IS NOT NULL, token FROM outlast_migrate_lease"
        ).fetchone()
    assert lease is not None and lease[0] is True  # released, checked, nothing left behind
    assert not advisory_locks(dsn)
    head_at = max(r["applied_at"] for r in results if r["applied"])
    lags = [r["ready_at"] - head_at for r in results]
    assert max(lags) <= 2.0
    print(
        f"\nPgBouncer (transaction mode, options dropped), {N} processes: advisory lock"
        f" refused by all {len(refused)} (LockNotSupported, no lock taken); lease mode:"
        f" each of {len(ALEMBIC_REVISIONS)} revisions applied once, head"
        f" {head_at - released:.2f}s after the release, ready after head {spread(lags)},"
        f" lease taken {lease[1]} time(s)"
    )
