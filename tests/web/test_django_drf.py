"""The Django REST framework example under real faults, gunicorn sync workers and uvicorn.

``examples/django_app`` is written the way DRF apps are: ``ATOMIC_REQUESTS``,
a ``ModelViewSet`` whose create is an ordinary ``serializer.save()``, token
authentication, pagination. These tests check, through the chaos proxy and a
real PostgreSQL, what its clients see:

- routes that need no database (``/health/live``, ``/health/ready``, the
  ``EXEMPT`` ping and API root) answer 200 while the database is down or
  blackholed, although ``ATOMIC_REQUESTS`` would connect before every view;
  data routes answer 503 with ``Retry-After``, and exempting the API root
  exempts nothing else;
- a write whose COMMIT reply is lost is resolved with ``pg_xact_status()``:
  201, stored once; a COMMIT that never reached the server is a 503
  ``SERVICE_UNAVAILABLE`` and nothing is stored; one that cannot be resolved
  in time is a 503 ``OUTCOME_UNKNOWN`` (and it was stored);
- without ``ATOMIC_REQUESTS`` an INSERT whose reply is lost (autocommit: it
  committed by itself) is ``OUTCOME_UNKNOWN``, never "not applied";
- log lines name route patterns (``GET /api/leads/<pk>/``), and no
  traceback reaches the server log.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import begin_outage, end_outage
from drf_kit import SERVERS, DrfService, prepare, start, stored, warm

from outlast.testing.plugin import TEMPLATE

OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
UNAVAILABLE = "SERVICE_UNAVAILABLE"
CUT_COMMIT = {"pattern": r"^\s*COMMIT\b", "wait_reply": True}
_dbs = itertools.count(1)


@pytest.fixture(scope="module")
def drf_database(pg_server: Any) -> tuple[str, str]:
    """A migrated database for the example, and the API token of its user."""
    name = f"drf_{os.getpid()}_{next(_dbs)}"
    pg_server.create_database(name, template=TEMPLATE)
    token = prepare(pg_server.url(name, driver="psycopg"))
    return name, token


@pytest.fixture
def direct_dsn(pg_server: Any, drf_database: tuple[str, str]) -> str:
    return str(pg_server.dsn(drf_database[0]))


@pytest.fixture
def drf(
    pg_proxy: Any, drf_database: tuple[str, str], tmp_path: Path
) -> Iterator[Callable[..., DrfService]]:
    started: list[DrfService] = []
    name, token = drf_database

    def run(kind: str, **options: Any) -> DrfService:
        service = start(kind, pg_proxy.url(name, driver="psycopg"), token, tmp_path, **options)
        started.append(service)
        return service

    yield run
    for service in started:
        service.stop()


def _error(response: Any) -> str | None:
    body = response.json()
    return body.get("error") if isinstance(body, dict) else None


def _no_traceback(service: DrfService) -> None:
    log = service.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("fault", ["down", "blackhole"])
@pytest.mark.parametrize("kind", SERVERS)
def test_routes_without_a_database_answer_while_it_is_down(
    kind: str, fault: str, drf: Callable[..., DrfService], pg_proxy: Any
) -> None:
    svc = drf(kind)
    warm(svc)
    lead = svc.create("before", f"before-{uuid.uuid4().hex[:8]}@example.com").json()
    with pg_proxy.fault(fault):
        for path in ("/health/live", "/health/ready", "/api/ping/", "/api/"):
            response = svc.client.get(path)
            assert response.status_code == 200, (path, response.status_code, response.text)
        data = [svc.client.get("/api/leads/"), svc.client.get(f"/api/leads/{lead['id']}/")]
        data.append(svc.create("during", "during@example.com"))
        for response in data:
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["content-type"] == "application/problem+json"
            assert _error(response) == UNAVAILABLE
        # Each gunicorn worker has its own Guard: readiness says "warn" in a
        # worker that met the outage. Which worker takes a request is the
        # kernel's choice, so ask again (after a data request) until one does.
        statuses = []
        for _ in range(10):
            statuses.append(svc.client.get("/health/ready").json()["status"])
            if statuses[-1] == "warn":
                break
            assert svc.client.get("/api/leads/").status_code == 503
        assert statuses[-1] == "warn", statuses
    log = svc.log()
    # Route patterns, not URL regexes, in the log labels.
    assert "route=GET /api/leads/<pk>/" in log, log[-2000:]
    assert "(?P<" not in log and "^leads" not in log
    _no_traceback(svc)


@pytest.mark.parametrize("kind", SERVERS)
def test_a_lost_commit_reply_is_resolved_and_the_write_answered_201_once(
    kind: str, drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = drf(kind)
    warm(svc)
    emails = [f"cut-{i}-{uuid.uuid4().hex[:8]}@example.com" for i in range(4)]
    with pg_proxy.fault("cut_after", **CUT_COMMIT):  # every COMMIT commits; its reply is lost
        answers = [svc.create("cut", email) for email in emails]
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 4
    assert [stored(direct_dsn, e) for e in emails] == [1] * 4  # applied once, never replayed
    assert svc.log().count("[COMMIT_RESOLVED]") >= 4
    # The connection that answered the question carries on: reads work at once.
    assert svc.client.get("/api/leads/").status_code == 200
    _no_traceback(svc)


def test_a_commit_lost_on_its_way_is_not_applied_and_says_so(
    drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = drf("gunicorn-sync")
    warm(svc)
    email = f"never-{uuid.uuid4().hex[:8]}@example.com"
    with pg_proxy.fault("cut_after", pattern=r"^\s*COMMIT\b", forward=False):
        response = svc.create("never", email)
    assert response.status_code == 503, response.text
    assert _error(response) == UNAVAILABLE  # true: pg_xact_status() said aborted
    assert stored(direct_dsn, email) == 0
    _no_traceback(svc)


@pytest.mark.parametrize("kind", SERVERS)
def test_a_lost_commit_that_cannot_be_resolved_is_outcome_unknown(
    kind: str, drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = drf(kind, budget=2.0)
    warm(svc)
    email = f"unknown-{uuid.uuid4().hex[:8]}@example.com"
    pg_proxy.add_fault("cut_after", **CUT_COMMIT)
    # Every pg_xact_status() question is cut off before it reaches the server.
    pg_proxy.add_fault("cut_after", pattern="pg_xact_status", forward=False)
    try:
        response = svc.create("unknown", email)
    finally:
        pg_proxy.clear()
    assert response.status_code == 503, response.text
    assert _error(response) == OUTCOME_UNKNOWN
    assert int(response.headers["retry-after"]) >= 1
    assert stored(direct_dsn, email) == 1  # it was applied: "unknown" was honest
    assert svc.client.get("/api/leads/").status_code == 200  # and the service carries on
    _no_traceback(svc)


@pytest.mark.parametrize("kind", SERVERS)
def test_an_autocommit_insert_whose_reply_is_lost_is_outcome_unknown(
    kind: str, drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = drf(kind, atomic=False)  # no ATOMIC_REQUESTS: save() commits by itself
    warm(svc)
    email = f"auto-{uuid.uuid4().hex[:8]}@example.com"
    with pg_proxy.fault("cut_after", pattern=r"^\s*INSERT\b", wait_reply=True, count=1):
        response = svc.create("auto", email)
    assert response.status_code == 503, response.text
    assert _error(response) == OUTCOME_UNKNOWN
    assert stored(direct_dsn, email) == 1
    # A lost reply to a read is a plain SERVICE_UNAVAILABLE: nothing can have been written.
    with pg_proxy.fault("cut_after", pattern=r"^\s*SELECT\b", wait_reply=True, count=1):
        response = svc.client.get("/api/leads/")
    assert response.status_code == 503 and _error(response) == UNAVAILABLE
    _no_traceback(svc)


def test_without_outlast_a_lost_commit_is_a_500_for_a_stored_write(
    drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str
) -> None:
    svc = drf("gunicorn-sync", enabled=False)
    warm(svc)
    email = f"plain-{uuid.uuid4().hex[:8]}@example.com"
    with pg_proxy.fault("cut_after", **CUT_COMMIT):
        response = svc.create("plain", email)
    assert response.status_code == 500
    assert stored(direct_dsn, email) == 1


# --------------------------------------------------------------------------- outages

RECOVERY_BOUND = 1.0  # the first 200 within 1 s of the fault clearing, with the defaults
SLACK = 1.0  # HTTP and scheduling overhead on a busy 2-core machine


def _first_200(svc: DrfService, cleared: float, timeout: float = 30.0) -> float:
    """Seconds from `cleared` until an authenticated ``GET /api/leads/`` first answered 200.

    A new request starts every 50 ms whether or not the earlier ones have
    answered (one stuck on a dead connection must not hide a later 200).
    """
    answered: list[float] = []
    done = threading.Event()
    headers = {"Authorization": f"Token {svc.token}"}

    def poll(client: httpx.Client) -> None:
        try:
            response = client.get("/api/leads/", headers=headers)
        except httpx.HTTPError:
            return
        if response.status_code == 200:
            answered.append(time.monotonic())
            done.set()

    client = httpx.Client(base_url=f"http://127.0.0.1:{svc.port}", timeout=10.0)
    with client, ThreadPoolExecutor(max_workers=16) as pool:
        tick = cleared
        while not done.is_set():
            if time.monotonic() - cleared > timeout:
                raise AssertionError(f"no 200 within {timeout}s of the fault clearing")
            pool.submit(poll, client)
            tick += 0.05
            done.wait(max(tick - time.monotonic(), 0.0))
    return min(answered) - cleared


OUTAGES = [
    pytest.param("gunicorn-sync", "down", id="gunicorn-sync-down"),
    pytest.param("uvicorn", "down", id="uvicorn-down"),
    pytest.param("gunicorn-sync", "neon_endpoint_disabled", id="gunicorn-sync-neon"),
    pytest.param("gunicorn-sync", "terminate", id="gunicorn-sync-terminate"),
    pytest.param(
        "gunicorn-sync",
        "restart",
        id="gunicorn-sync-restart",
        marks=[pytest.mark.slow, pytest.mark.destructive],
    ),
]


@pytest.mark.parametrize(("kind", "scenario"), OUTAGES)
def test_the_drf_app_rides_out_an_outage_and_recovers_within_a_second(
    kind: str,
    scenario: str,
    drf: Callable[..., DrfService],
    pg_proxy: Any,
    direct_dsn: str,
    request: pytest.FixtureRequest,
) -> None:
    pg = request.getfixturevalue("pg_control") if scenario == "restart" else None
    svc = drf(kind)
    warm(svc)
    timings: list[tuple[str, int, float]] = []
    begin_outage(scenario, pg_proxy, pg)
    try:
        for _ in range(6):
            start_at = time.monotonic()
            response = svc.client.get("/api/leads/")
            timings.append(("GET /api/leads/", response.status_code, time.monotonic() - start_at))
            assert response.status_code == 503 and _error(response) == UNAVAILABLE
        email = f"{scenario}-{uuid.uuid4().hex[:8]}@example.com"
        response = svc.create("during", email)
        assert response.status_code == 503, response.text
        for path in ("/health/live", "/health/ready", "/api/ping/", "/api/"):
            assert svc.client.get(path).status_code == 200, path
        assert svc.client.get("/health/db").status_code == 503
    finally:
        end_outage(scenario, pg_proxy, pg)
    recovered = _first_200(svc, time.monotonic())
    print(f"\n{kind}/{scenario}: first 200 {recovered:.3f}s after the fault cleared; {timings}")
    assert max(t for _p, _s, t in timings) <= 5.0 + SLACK
    assert recovered <= RECOVERY_BOUND
    assert stored(direct_dsn, email) == 0  # the 503 SERVICE_UNAVAILABLE write was not applied
    # Writes work again. With several worker processes each has its own breaker:
    # the one that answers may still be open for its last period (at most 0.5 s).
    deadline = time.monotonic() + 3.0
    after = email.replace("@", "-after@")
    while (status := svc.create("after", after).status_code) != 201:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.1)
    _no_traceback(svc)


# --------------------------------------------------------------------------- COMMIT past the budget

SLOW_NAME = "slow-commit"
SLOW_COMMIT = 1.2  # seconds of a deferred trigger at COMMIT
_BUSY_COMMITS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'active' AND query ~* '^\\s*COMMIT' AND pid <> pg_backend_pid()"
)


def _wait_for_commits(dsn: str, *, busy: bool, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(_BUSY_COMMITS).fetchone()
            if row is not None and bool(row[0]) is busy:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no COMMIT {'started' if busy else 'ended'} in {timeout}s")
            time.sleep(0.005)


@pytest.fixture
def slow_commit(direct_dsn: str) -> Iterator[None]:
    """COMMIT of a lead named `SLOW_NAME` takes `SLOW_COMMIT` seconds (a deferred trigger)."""
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION outlast_slow_commit() RETURNS trigger"
            f" LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep({SLOW_COMMIT}); RETURN NULL; END $$"
        )
        conn.execute("DROP TRIGGER IF EXISTS outlast_slow_commit ON drf_leads")
        conn.execute(
            "CREATE CONSTRAINT TRIGGER outlast_slow_commit AFTER INSERT ON drf_leads"
            f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.name = '{SLOW_NAME}')"
            " EXECUTE FUNCTION outlast_slow_commit()"
        )
    yield
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER IF EXISTS outlast_slow_commit ON drf_leads")


def test_a_budget_that_runs_out_during_commit_is_outcome_unknown(
    drf: Callable[..., DrfService], pg_proxy: Any, direct_dsn: str, slow_commit: None
) -> None:
    budget = 1.0
    svc = drf("gunicorn-sync", budget=budget)
    warm(svc)
    email = f"slow-{uuid.uuid4().hex[:8]}@example.com"
    result: dict[str, Any] = {}

    def post() -> None:
        start_at = time.monotonic()
        response = svc.create(SLOW_NAME, email)
        result.update(response=response, took=time.monotonic() - start_at)

    writer = threading.Thread(target=post)
    writer.start()
    try:
        _wait_for_commits(direct_dsn, busy=True)
        # Neither the reply nor a pg_xact_status() question gets through now.
        pg_proxy.add_fault("freeze")
        writer.join(budget + SLACK + 1.0)
        _wait_for_commits(direct_dsn, busy=False)
    finally:
        hung = writer.is_alive()
        pg_proxy.clear()
        writer.join(30)
    assert not hung, "the request outlived its budget"
    response = result["response"]
    print(f"\nslow COMMIT: {response.status_code} {response.text} in {result['took']:.3f}s")
    assert response.status_code == 503 and _error(response) == OUTCOME_UNKNOWN
    assert result["took"] <= budget + SLACK
    assert stored(direct_dsn, email) == 1  # it was applied: "unknown" was honest
    _no_traceback(svc)


def test_a_read_whose_commit_reply_is_lost_still_answers(
    drf: Callable[..., DrfService], pg_proxy: Any
) -> None:
    """Under ATOMIC_REQUESTS a GET is a transaction too; it wrote nothing (no xid),
    so a lost COMMIT reply changes nothing and the 200 stands."""
    svc = drf("gunicorn-sync")
    warm(svc)
    with pg_proxy.fault("cut_after", **CUT_COMMIT) as fault:
        answers = [svc.client.get("/api/leads/") for _ in range(4)]
        cut = pg_proxy.fault_info(fault)["hits"]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert cut >= 4  # every one of them had its COMMIT reply cut off
    _no_traceback(svc)


@pytest.mark.parametrize("kind", SERVERS)
def test_requests_caught_by_a_dead_link_answer_within_their_budget(
    kind: str, drf: Callable[..., DrfService], pg_proxy: Any
) -> None:
    """Requests in flight when the link dies, and those after: none outlives the budget.

    Django reconnects on its way out of a failed ATOMIC_REQUESTS transaction,
    and sends ``SET TIME ZONE`` on every new connection (under uvicorn, on
    every request): both stay inside the budget.
    """
    budget = 4.5
    svc = drf(kind, budget=budget, workers=4)
    warm(svc)
    stop = threading.Event()
    latencies: list[tuple[float, int | str]] = []

    def loop() -> None:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{svc.port}",
            headers={"Authorization": f"Token {svc.token}"},
            timeout=30.0,
        )
        with client:
            while not stop.is_set():
                start_at = time.monotonic()
                try:
                    status: int | str = client.get("/api/leads/").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                latencies.append((time.monotonic() - start_at, status))

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        with pg_proxy.fault("blackhole"):
            time.sleep(6.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    slow = [(round(took, 2), status) for took, status in latencies if took > budget + SLACK]
    assert not slow, slow
    assert {status for _, status in latencies} <= {200, 503}
    _no_traceback(svc)
