"""A half-open breaker lets one request through to a recovering database, in every framework.

Each test runs a small service (``tests/web/probe_apps``: Flask and Django
under gunicorn, FastAPI under uvicorn) on loopback, behind the chaos proxy in
front of the embedded PostgreSQL. Its views query the database directly (an
engine, the ORM), not through ``web.call``, so the integration's admission is
all that stands between the breaker and a stampede.

The database is "slow to answer the probe": the test holds an advisory lock
that the route's query waits for. Then it counts, on the server side, what
reached the database: the view's own counter, the backends running the
route's query in ``pg_stat_activity`` and the connections the proxy opened
(the services open one per request that gets through).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import Server, spawn, wait_until_up

from outlast.testing._postgres import free_port

APPS = Path(__file__).resolve().parent / "probe_apps"
BUDGET = 10.0
CONCURRENT = 12
FAST = 1.0  # a rejected request never touches the database: far below the probe's wait
OPEN_FOR = 0.5  # the services' breaker period (probe_apps/_probe_common.py)


PROBE_APPS = {
    "fastapi": "probe_fastapi:app",
    "flask": "probe_flask:app",
    "django": "probe_django.wsgi:application",
}


@dataclass
class ProbeService(Server):
    tag: str = ""
    lock: int = 0

    def stats(self) -> dict[str, Any]:
        response = self.client.get("/api/stats")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


def _start(framework: str, database_url: str, tmp: Path) -> ProbeService:
    port = free_port()
    tag = f"outlast-probe-{uuid.uuid4().hex[:12]}"
    lock = int.from_bytes(os.urandom(4), "big")
    env = {
        "DATABASE_URL": database_url,
        "PROBE_TAG": tag,
        "PROBE_LOCK": str(lock),
        "OUTLAST_BUDGET": str(BUDGET),
    }
    log_path = tmp / f"probe-{framework}-{port}.log"
    proc = spawn(framework, port, env, log_path, app_dir=APPS, apps=PROBE_APPS)
    service = ProbeService(framework, port, proc, log_path, tag=tag, lock=lock)
    wait_until_up(service)
    return service


@pytest.fixture(scope="module", params=["flask", "django", "fastapi"])
def service(
    request: pytest.FixtureRequest,
    pg_proxy_session: Any,
    web_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ProbeService]:
    url = pg_proxy_session.url(web_database, driver="psycopg")
    svc = _start(request.param, url, tmp_path_factory.mktemp("probe"))
    yield svc
    svc.stop()


@pytest.fixture
def direct(pg_server: Any, web_database: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection straight to the server (not through the proxy): the test's own."""
    with psycopg.connect(pg_server.dsn(web_database), autocommit=True) as conn:
        yield conn


def _poll(check: Callable[[], bool], timeout: float) -> bool:
    """Poll `check` until it is true (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    if not _poll(check, timeout):
        raise AssertionError(f"not {what} within {timeout}s")


def _half_open(svc: ProbeService, proxy: Any) -> None:
    """A real outage opens the breaker; once the database is back, let the period run out."""
    proxy.add_fault("down")
    try:
        response = svc.client.get("/api/hold")
        assert response.status_code == 503, response.text
        assert svc.stats()["breaker"] == "open"
    finally:
        proxy.clear()
    _wait_for(lambda: svc.stats()["breaker"] == "half_open", 10.0, "half-open")


@contextlib.contextmanager
def _database_slow(direct: psycopg.Connection[Any], lock: int) -> Iterator[None]:
    """Until the block ends, the route's query waits (for the test's advisory lock)."""
    direct.execute("SELECT pg_advisory_lock(%s)", (lock,))
    try:
        yield
    finally:
        direct.execute("SELECT pg_advisory_unlock(%s)", (lock,))


def _running_the_query(direct: psycopg.Connection[Any], tag: str) -> int:
    row = direct.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
        (f"%{tag}%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _get(client: httpx.Client, path: str) -> tuple[int, dict[str, str], float]:
    start = time.monotonic()
    response = client.get(path)
    return response.status_code, dict(response.headers), time.monotonic() - start


def _routes(framework: str) -> list[str]:
    # FastAPI: an async endpoint (the middleware's task) and a sync one (the thread pool).
    return ["/api/hold", "/api/hold-sync"] if framework == "fastapi" else ["/api/hold"]


@dataclass
class Burst:
    early: list[tuple[int, dict[str, str], float]]  # answered while the probe waited
    statuses: list[int]  # every answer, the probe's included
    in_database: int  # backends running the route's query meanwhile
    entered: int  # requests that entered the view
    opened: int  # connections the proxy opened


def _burst(svc: ProbeService, route: str, proxy: Any, direct: psycopg.Connection[Any]) -> Burst:
    """`CONCURRENT` requests at once while the database keeps the probe waiting."""
    before = svc.stats()["entered"]
    connections = proxy.stats()["total_connections"]
    barrier = threading.Barrier(CONCURRENT)
    results: list[tuple[int, dict[str, str], float]] = []
    lock = threading.Lock()

    def request(client: httpx.Client) -> None:
        barrier.wait()
        result = _get(client, route)
        with lock:
            results.append(result)

    client = httpx.Client(
        base_url=f"http://127.0.0.1:{svc.port}",
        timeout=30.0,
        limits=httpx.Limits(max_connections=CONCURRENT * 2),
    )
    with client, ThreadPoolExecutor(CONCURRENT) as pool:
        with _database_slow(direct, svc.lock):
            futures = [pool.submit(request, client) for _ in range(CONCURRENT)]
            _wait_for(lambda: len(results) >= CONCURRENT - 1, 20.0, "N-1 answers")
            # Everyone else has been answered; the probe waits in the database
            # (or is on its way there: give it a moment to send its query).
            # (A stampede would show in the counts and timings below, not here.)
            _poll(lambda: _running_the_query(direct, svc.tag) >= 1, 10.0)
            in_database = _running_the_query(direct, svc.tag)
            entered = svc.stats()["entered"] - before
            opened = proxy.stats()["total_connections"] - connections
            early = list(results)
        for future in futures:
            future.result(timeout=30)
    return Burst(early, sorted(r[0] for r in results), in_database, entered, opened)


def test_half_open_admits_one_request_to_the_database_and_503s_the_rest(
    service: ProbeService, pg_proxy: Any, direct: psycopg.Connection[Any]
) -> None:
    for route in _routes(service.framework):
        _half_open(service, pg_proxy)
        burst = _burst(service, route, pg_proxy, direct)
        rejected = [r for r in burst.early if r[0] == 503]
        print(
            f"\n{service.framework} {route}: {len(rejected)} 503s"
            f" (slowest {max(r[2] for r in rejected) * 1000:.0f} ms); in the database"
            f" {burst.in_database}, entered the view {burst.entered},"
            f" proxy connections {burst.opened}"
        )
        assert len(burst.early) == len(rejected) == CONCURRENT - 1, burst.early
        for _status, headers, took in rejected:
            assert int(headers["retry-after"]) >= 1
            assert headers["content-type"].startswith("application/problem+json")
            assert took < FAST
        # Every integration admits a request when it first reaches for the
        # database (a pool checkout, Django's connect or first query): every
        # request enters the view, one reaches the database.
        assert (burst.in_database, burst.entered, burst.opened) == (1, CONCURRENT, 1)
        # The probe got its answer: a 200, and the breaker closed.
        assert burst.statuses == [200] + [503] * (CONCURRENT - 1)
        assert service.stats()["breaker"] == "closed"
        # Requests flow again, all of them to the database.
        before = service.stats()["entered"]
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(pool.map(service.client.get, [route] * CONCURRENT))
        assert [a.status_code for a in answers] == [200] * CONCURRENT
        assert service.stats()["entered"] - before == CONCURRENT


def test_a_request_that_never_reaches_the_database_is_neither_refused_nor_the_probe(
    service: ProbeService, pg_proxy: Any
) -> None:
    """Admission on first use: an ordinary route that answers without a query."""
    pg_proxy.add_fault("down")
    try:
        assert service.client.get("/api/hold").status_code == 503
        assert service.stats()["breaker"] == "open"
        # The breaker is open: a database route is refused, this one is served.
        response = service.client.get("/api/cached")
        assert response.status_code == 200, response.text
        assert service.client.get("/api/hold").status_code == 503
    finally:
        pg_proxy.clear()
    _wait_for(lambda: service.stats()["breaker"] == "half_open", 10.0, "half-open")
    # Half-open: its clean answer is no evidence that the database is back.
    for _ in range(3):
        assert service.client.get("/api/cached").status_code == 200
    assert service.stats()["breaker"] == "half_open"
    assert _get(service.client, "/api/hold")[0] == 200
    assert service.stats()["breaker"] == "closed"


def test_a_probe_that_fails_for_an_unrelated_reason_frees_the_slot(
    service: ProbeService, pg_proxy: Any
) -> None:
    _half_open(service, pg_proxy)
    # The probe: a bug in the view. (A client of its own: uvicorn closes the
    # connection of a request whose app raised, once the 500 is out.)
    response = httpx.get(f"http://127.0.0.1:{service.port}/api/boom", timeout=30.0)
    assert response.status_code == 500
    assert service.stats()["breaker"] == "half_open"
    # The very next request is admitted (a leaked slot would 503 it for 10 minutes).
    status, _h, _t = _get(service.client, "/api/hold")
    assert status == 200
    assert service.stats()["breaker"] == "closed"


def test_a_probe_whose_client_went_away_frees_the_slot(
    service: ProbeService, pg_proxy: Any, direct: psycopg.Connection[Any]
) -> None:
    _half_open(service, pg_proxy)
    before = service.stats()["entered"]
    with _database_slow(direct, service.lock):
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and hangs up
            service.client.get("/api/hold", timeout=0.5)
        assert service.stats()["entered"] == before + 1
        assert _get(service.client, "/api/hold")[0] == 503  # the probe is still in flight
    # The abandoned probe ends on the server; the slot is free again (here the
    # probe even succeeded and closed the breaker), and requests get through.
    _wait_for(lambda: _get(service.client, "/api/hold")[0] == 200, 10.0, "admitted again")
    assert service.stats()["breaker"] == "closed"
