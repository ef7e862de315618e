"""A request that fails while its COMMIT is in flight or being resolved says OUTCOME_UNKNOWN.

Real services (uvicorn; gunicorn for Flask and Django) behind the chaos
proxy, writing with an ordinary ``session.commit()`` (FastAPI, Flask) or
``runtime().transaction(connection, ...)`` (Django). Two ways the request can end
before anyone knows whether its COMMIT took effect:

- the resolution is refused: every COMMIT reply is lost (``cut_after``) and
  new logins are rejected, so the ``pg_xact_status()`` question cannot be
  asked; after three failures the breaker opens and the Guard refuses the
  question outright (`DatabaseUnavailable`);
- the budget runs out: a deferred trigger makes COMMIT take longer than a
  1 s budget and the proxy freezes as soon as the server is busy with it, so
  neither the reply nor a cancel request gets through.

Both writes are in fact applied. A plain ``SERVICE_UNAVAILABLE`` would tell
the client it was not, and the client would send it again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import BUDGET, Service

from outlast.demo._settings import CREATE_TABLE, CREATE_WRITES_TABLE

OUTCOME_UNKNOWN = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "The outcome of the request is unknown: it may have been applied",
    "error": "OUTCOME_UNKNOWN",
}
SLACK = 1.0
TABLES = {"fastapi": "lead_writes", "flask": "lead_writes", "django": "leads"}
KEY = {"fastapi": "lead_id", "flask": "lead_id", "django": "id"}
SLOW_NAME = "slow-commit"
SLOW_COMMIT = 1.2  # seconds; below the examples' statement_timeout (1.5 s)


def _count(dsn: str, framework: str, lead: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {TABLES[framework]} WHERE {KEY[framework]} = %s", (lead,)
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def direct_dsn(pg_server: Any, web_database: str) -> str:
    """The web database, straight to the server (not through the proxy)."""
    return str(pg_server.dsn(web_database))


@pytest.mark.parametrize("framework", ["fastapi", "flask"])  # Django: test_django_drf.py
def test_a_lost_commit_whose_resolution_is_refused_is_outcome_unknown(
    framework: str, service_factory: Callable[..., Service], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = service_factory(framework)
    # A threaded server (gunicorn gthread) may hand the write to a thread whose
    # connection is not open yet: then the refused login strikes before COMMIT,
    # nothing is stored and "unavailable" is the honest answer, but the lost
    # COMMIT was not exercised. Try again (bounded) until it was.
    for _ in range(6):
        lead = f"refused-{framework}-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + 15  # a previous try may have opened the breaker
        while svc.post_lead(f"{lead}-warm-{time.monotonic()}")[0].status_code != 201:
            assert time.monotonic() < deadline, "the service never recovered"
            time.sleep(0.2)
        pg_proxy.add_fault("cut_after", pattern=r"^\s*COMMIT\b", wait_reply=True)
        pg_proxy.add_fault("reject_login", preset="starting_up")
        try:
            response, took = svc.post_lead(lead)
        finally:
            pg_proxy.clear()
        print(f"\n{framework}: {response.status_code} {response.json()} in {took:.3f}s")
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        assert took <= BUDGET + SLACK
        if _count(direct_dsn, framework, lead) == 0:
            assert response.json()["error"] == "SERVICE_UNAVAILABLE"  # not applied, and said so
            continue
        assert response.json() == OUTCOME_UNKNOWN  # it was applied: "unknown" was honest
        break
    else:
        pytest.fail("the COMMIT was never reached in 6 tries")


@pytest.fixture
def slow_commit(direct_dsn: str) -> Iterator[None]:
    """COMMIT of a row named `SLOW_NAME` takes `SLOW_COMMIT` seconds (a deferred trigger)."""
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(CREATE_TABLE)  # the services create them too, maybe not yet
        conn.execute(CREATE_WRITES_TABLE)
        conn.execute(
            "CREATE OR REPLACE FUNCTION outlast_slow_commit() RETURNS trigger"
            f" LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({SLOW_COMMIT}); RETURN NULL; END $$"
        )
        for table in sorted(set(TABLES.values())):
            conn.execute(f"DROP TRIGGER IF EXISTS outlast_slow_commit ON {table}")
            conn.execute(
                f"CREATE CONSTRAINT TRIGGER outlast_slow_commit AFTER INSERT ON {table}"
                f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = '{SLOW_NAME}')"
                " EXECUTE FUNCTION outlast_slow_commit()"
            )
    yield
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        for table in sorted(set(TABLES.values())):
            conn.execute(f"DROP TRIGGER IF EXISTS outlast_slow_commit ON {table}")


_BUSY_COMMITS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'active' AND query ~* '^\\s*COMMIT' AND pid <> pg_backend_pid()"
)


def _wait_for_commits(dsn: str, *, busy: bool, timeout: float = 5.0) -> None:
    """Block until some backend of the database is busy with a COMMIT (or none is)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(_BUSY_COMMITS).fetchone()
            if row is not None and bool(row[0]) is busy:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no COMMIT {'started' if busy else 'ended'} in {timeout}s")
            time.sleep(0.005)


@pytest.mark.parametrize("framework", ["fastapi", "flask"])  # Django: test_django_drf.py
def test_a_budget_that_runs_out_during_commit_is_outcome_unknown(
    framework: str,
    service_factory: Callable[..., Service],
    pg_proxy: Any,
    direct_dsn: str,
    slow_commit: None,
) -> None:
    budget = 1.0
    svc = service_factory(framework, budget=budget)
    lead = f"slow-{framework}-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(f"{lead}-warm")[0].status_code == 201
    result: dict[str, Any] = {}

    def post() -> None:
        start = time.monotonic()
        response = svc.client.post("/api/leads", json={"id": lead, "name": SLOW_NAME})
        result.update(response=response, took=time.monotonic() - start)

    writer = threading.Thread(target=post)
    writer.start()
    try:
        _wait_for_commits(direct_dsn, busy=True)
        # Now the reply (and psycopg's cancel request, and any pg_xact_status
        # question) cannot get through: the request's budget runs out first.
        pg_proxy.add_fault("freeze")
        writer.join(budget + SLACK + 1.0)
        # Lift the freeze only once the server is done: a held cancel request
        # must not reach a COMMIT still running.
        _wait_for_commits(direct_dsn, busy=False)
    finally:
        hung = writer.is_alive()
        pg_proxy.clear()
        writer.join(30)
    assert not hung, "the request outlived its budget"
    response, took = result["response"], result["took"]
    print(f"\n{framework}: {response.status_code} {response.json()} in {took:.3f}s")
    assert response.status_code == 503, response.text
    assert response.json() == OUTCOME_UNKNOWN
    assert took <= budget + SLACK
    assert _count(direct_dsn, framework, lead) == 1  # the server did commit it
