"""``cut_at`` and recordings: a fault at any protocol message, in either direction.

A recording lists a session's messages as the proxy saw them; ``cut_at``
kills the link at the Nth message of one direction, before or after it is
delivered, with a FIN, an RST or a FATAL 57P01. Checked against the real
server: what the client sees, and whether the server ran the message.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

import outlast
from outlast.testing._chaos_fixtures import ProxiedServer
from outlast.testing.plugin import PgDatabase


@pytest.fixture
def table(pg_database: PgDatabase) -> PgDatabase:
    with psycopg.connect(pg_database.dsn(), autocommit=True) as conn:
        conn.execute("create table t (id int)")
    return pg_database


def _dsn(proxy: ProxiedServer, db: PgDatabase) -> str:
    return db.dsn(host=proxy.host, port=proxy.port, connect_timeout=10)


def _write(dsn: str) -> None:
    """BEGIN, INSERT, COMMIT, each a simple query (psycopg sends no parameters here)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("insert into t values (1)")


def _rows(db: PgDatabase) -> int:
    """Rows in t once the server has finished with every other session."""
    with psycopg.connect(db.dsn(), autocommit=True) as direct:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            busy = direct.execute(
                "select count(*) from pg_stat_activity where datname = current_database()"
                " and pid <> pg_backend_pid()"
            ).fetchone()
            if busy == (0,):
                break
            time.sleep(0.02)
        row = direct.execute("select count(*) from t").fetchone()
    assert row is not None
    return int(row[0])


def _recorded(proxy: ProxiedServer, dsn: str) -> list[dict[str, Any]]:
    with proxy.recording() as links:
        _write(dsn)
    assert len(links) == 1
    messages: list[dict[str, Any]] = links[0]["messages"]
    return messages


def _position(messages: list[dict[str, Any]], direction: str, predicate: Any) -> int:
    """The index, among `direction`'s messages, of the first one `predicate` accepts."""
    same = [m for m in messages if m["direction"] == direction]
    return next(i for i, m in enumerate(same) if predicate(m))


def test_a_recording_lists_both_directions_in_order(
    pg_proxy: ProxiedServer, table: PgDatabase
) -> None:
    messages = _recorded(pg_proxy, _dsn(pg_proxy, table))
    sql = [m["sql"] for m in messages if "sql" in m]
    assert sql == ["BEGIN", "insert into t values (1)", "COMMIT"]
    kinds = [(m["direction"][0], m["type"]) for m in messages]
    # the login's answer ends with ReadyForQuery; each query with CommandComplete + ReadyForQuery
    assert kinds[0] == ("d", "R") and ("d", "K") in kinds
    commit = kinds.index(("u", "Q"), len(kinds) - 4)
    assert kinds[commit:] == [("u", "Q"), ("d", "C"), ("d", "Z"), ("u", "X")]
    assert all(m["length"] >= 4 for m in messages)
    assert pg_proxy.stats()["faults"] == []  # recording is not a fault


@pytest.mark.parametrize("how", ["close", "reset", "terminate"])
@pytest.mark.parametrize("forward", [False, True])
def test_cut_at_the_commit_decides_whether_the_server_runs_it(
    pg_proxy: ProxiedServer, table: PgDatabase, how: str, forward: bool
) -> None:
    dsn = _dsn(pg_proxy, table)
    messages = _recorded(pg_proxy, dsn)
    commit = _position(messages, "upstream", lambda m: m.get("sql") == "COMMIT")
    _rows(table)
    pg_proxy.add_fault(
        "cut_at", direction="upstream", skip=commit, forward=forward, how=how, count=1
    )
    with pytest.raises(psycopg.OperationalError) as info:
        _write(dsn)
    assert pg_proxy.faults() == []  # it fired, once
    assert _rows(table) == 1 + (1 if forward else 0)  # the recording's row, and maybe this one
    fault = outlast.classify(info.value, during_commit=True)
    assert fault is not None and fault.kind is outlast.FaultKind.COMMIT_UNKNOWN
    if how == "terminate":
        assert "administrator command" in str(info.value)


@pytest.mark.parametrize("forward", [False, True])
def test_cut_at_a_server_message_hides_it_or_the_rest(
    pg_proxy: ProxiedServer, table: PgDatabase, forward: bool
) -> None:
    """Cutting the INSERT's CommandComplete: the INSERT ran, the client never hears the end."""
    dsn = _dsn(pg_proxy, table)
    messages = _recorded(pg_proxy, dsn)
    done = [
        i
        for i, m in enumerate(m for m in messages if m["direction"] == "downstream")
        if m["type"] == "C"
    ]
    insert_done = done[1]  # BEGIN's, the INSERT's, COMMIT's CommandComplete
    pg_proxy.add_fault("cut_at", direction="downstream", skip=insert_done, forward=forward, count=1)
    with pytest.raises(psycopg.OperationalError):
        _write(dsn)
    assert pg_proxy.faults() == []
    assert _rows(table) == 1  # only the recording's: the link died inside the transaction


def test_cut_at_counts_from_its_anchor(pg_proxy: ProxiedServer, table: PgDatabase) -> None:
    """``after``: the anchor is message number 0; earlier traffic is not counted."""
    dsn = _dsn(pg_proxy, table)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(3):
            conn.execute("select 1")
        pg_proxy.add_fault("cut_at", after=r"^insert", skip=0, forward=False, how="reset")
        conn.execute("select 2")  # before the anchor: passes
        with pytest.raises(psycopg.OperationalError):
            conn.execute("insert into t values (1)")
    assert _rows(table) == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"direction": "both"}, "direction must be upstream or downstream"),
        ({"how": "fin"}, "how must be one of close, reset, terminate"),
        ({"skip": -1}, "skip must be a finite number >= 0"),
        ({"skip": 1.5}, "skip must be a whole number"),
        ({"forward": "yes"}, "forward must be true or false"),
        ({"after": "("}, "after is not a valid regular expression"),
        ({"pattern": "COMMIT"}, "cut_at does not take 'pattern'"),
    ],
)
def test_cut_at_rejects_bad_options(
    pg_proxy: ProxiedServer, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        pg_proxy.add_fault("cut_at", **params)
