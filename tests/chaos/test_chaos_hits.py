"""Each fault counts what it acted on (``hits``), also after it ended, over the admin API.

A drill needs it to tell a scenario that passed from one whose fault never
fired (a ``cut_after`` COMMIT against a service that writes in autocommit sends
no COMMIT to cut).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from outlast.chaos import AdminClient, AdminServer, Proxy


@pytest.fixture
def admin(pg_proxy: Proxy) -> Any:
    with AdminServer([pg_proxy]) as server:
        yield AdminClient(server.url)


def _connect(pg_proxy: Any, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(pg_proxy.dsn(connect_timeout=3), **kw)


def test_cut_after_counts_the_messages_it_cut_and_none_without_a_match(
    pg_proxy: Any, admin: AdminClient
) -> None:
    name = pg_proxy.name
    fid = admin.add_fault(name, "cut_after", pattern=r"^\s*COMMIT\b", wait_reply=True)
    with _connect(pg_proxy, autocommit=True) as conn:  # autocommit: no COMMIT is ever sent
        conn.execute("CREATE TEMP TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    assert admin.fault_info(name, fid)["hits"] == 0
    for _ in range(2):
        conn = _connect(pg_proxy)
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            conn.commit()
        conn.close()
    admin.remove_fault(name, fid)
    info = admin.fault_info(name, fid)  # ended, still remembered
    assert info["hits"] == 2 and info["active"] is False and info["type"] == "cut_after"


def test_terminate_reject_login_and_link_faults_count_connections(
    pg_proxy: Any, admin: AdminClient
) -> None:
    name = pg_proxy.name
    live = [_connect(pg_proxy, autocommit=True) for _ in range(3)]
    try:
        fid = admin.add_fault(name, "terminate")
        assert admin.fault_info(name, fid)["hits"] == 3
        admin.remove_fault(name, fid)
    finally:
        for conn in live:
            conn.close()
    fid = admin.add_fault(name, "reject_login", preset="starting_up")
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            _connect(pg_proxy)
    assert admin.fault_info(name, fid)["hits"] == 2
    admin.remove_fault(name, fid)
    fid = admin.add_fault(name, "latency", ms=1)
    assert admin.fault_info(name, fid)["hits"] == 0  # nobody connected yet
    with _connect(pg_proxy, autocommit=True) as conn:
        conn.execute("SELECT 1")
    assert [f["hits"] for f in admin.faults(name) if f["id"] == fid] == [1]
    with pytest.raises(Exception, match="no fault"):
        admin.fault_info(name, "latency-999999")
