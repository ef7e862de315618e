"""A service started before its schema: /health/ready says "migrations pending" until then."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask import Flask
from migrate_kit import SQL_DIR, SQL_REVISIONS, log_counts

import outlast
import outlast.migrate as migrate
from outlast.flask import Outlast


def _ready(client: Any) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/ready")
    return response.status_code, response.get_json(force=True)


def test_a_waiting_service_is_unready_until_another_process_migrates(pg_dsn: str) -> None:
    status = migrate.run(
        migrate.SqlRunner(SQL_DIR),
        dsn=pg_dsn,
        role="wait",
        wait=0.6,
        poll=0.2,
        on_timeout="unready",
    )
    try:
        assert status.outcome == "pending"
        assert not status.ready
        app = Flask(__name__)
        Outlast(app, guard=outlast.Guard("main"), ready=status)
        client = app.test_client()
        code, doc = _ready(client)
        assert code == 503
        check = doc["checks"]["startup:ready"][0]
        assert check["status"] == "fail"
        assert check["output"] == ("migrations pending: 4 pending (database at base, head 0004)")
        # Another process (the API container) migrates; the background check sees it.
        assert migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn).outcome == "applied"
        assert status.wait_ready(15)
        code, doc = _ready(client)
        assert code == 200
        assert "output" not in doc["checks"]["startup:ready"][0]
        assert status.outcome == "at_head"
        assert status.describe() == "at head 0004"
    finally:
        status.close()


def test_a_migrating_service_that_timed_out_still_migrates_in_the_background(
    pg_dsn: str,
) -> None:
    classid, objid = migrate.advisory_key("default")
    with psycopg.connect(pg_dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        status = migrate.run(
            migrate.SqlRunner(SQL_DIR), dsn=pg_dsn, wait=0.6, poll=0.2, on_timeout="unready"
        )
        try:
            assert not status.ready
            assert status.holder is not None
            assert status.holder.pid == other.info.backend_pid
        except BaseException:
            status.close()
            raise
    # The holder went away without migrating: the background run takes over.
    try:
        assert status.wait_ready(20)
        assert status.outcome == "applied"
        assert status.leader
        assert status.applied == SQL_REVISIONS
        assert {rev: len(a) for rev, a in log_counts(pg_dsn).items()} == dict.fromkeys(
            SQL_REVISIONS, 1
        )
    finally:
        status.close()


def test_close_stops_the_background_run(pg_dsn: str) -> None:
    status = migrate.run(
        migrate.SqlRunner(SQL_DIR),
        dsn=pg_dsn,
        role="wait",
        wait=0.3,
        poll=0.2,
        on_timeout="unready",
    )
    status.close()
    assert status._thread is not None and not status._thread.is_alive()
    assert not status.ready


@pytest.mark.parametrize("outcome", ["applied", "at_head"])
def test_a_settled_status_is_ready(pg_dsn: str, outcome: str) -> None:
    if outcome == "at_head":
        migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn)
    status = migrate.run(migrate.SqlRunner(SQL_DIR), dsn=pg_dsn)
    assert status.outcome == outcome
    assert status() is True
    assert status.wait_ready(0)
