"""The example services under real outages: 503s within budget, honest health, fast recovery.

Each test starts one example service (uvicorn for FastAPI, gunicorn for Flask;
the Django REST framework example has its own, test_django_drf.py) on loopback
in a subprocess, pointed at the embedded PostgreSQL through the chaos proxy,
then breaks the database and watches what clients see.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import BUDGET, Service, begin_outage, end_outage

PROBLEM = {
    "type": "about:blank",
    "title": "Service Unavailable",
    "status": 503,
    "detail": "Database temporarily unavailable",
    "error": "SERVICE_UNAVAILABLE",
}
SLACK = 1.0  # HTTP and scheduling overhead on a busy 2-core machine
RECOVERY_BOUND = 1.0  # the promise: the first 200 within 1 s of the fault clearing
POLL_EVERY = 0.05
# The no-database route during an outage, against its own latency just before
# (both under the same background load of database requests): p95 within
# PING_FACTOR times the baseline's, or PING_MARGIN more, whichever is larger.
PING_FACTOR = 3.0
PING_MARGIN = 0.010
PING_SAMPLES = 60


SLOW = [pytest.mark.slow]
SCENARIOS = [
    pytest.param("down", id="down"),
    pytest.param("blackhole", id="blackhole", marks=SLOW),
    pytest.param("neon_endpoint_disabled", id="neon_endpoint_disabled"),
    pytest.param("terminate", id="terminate"),
    pytest.param("restart", id="restart", marks=[*SLOW, pytest.mark.destructive]),
]
CASES = [
    pytest.param(fw, *s.values, id=f"{fw}-{s.id}", marks=s.marks)
    for fw in ("fastapi", "flask")  # Django: test_django_drf.py
    for s in SCENARIOS
]


def _wait_for(check: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll `check` until it is true; returns the seconds it took (fails on timeout)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def _first_200(svc: Service, cleared: float, timeout: float = 30.0) -> float:
    """Seconds from `cleared` until a ``GET /api/leads`` first answered 200.

    A new request starts every `POLL_EVERY` seconds whether or not the earlier
    ones have answered (one stuck on a dead connection must not hide a 200
    that a later one got).
    """
    answered: list[float] = []
    done = threading.Event()

    def poll(client: httpx.Client) -> None:
        try:
            response = client.get("/api/leads")
        except httpx.HTTPError:
            return
        if response.status_code == 200:
            answered.append(time.monotonic())
            done.set()

    client = httpx.Client(
        base_url=f"http://127.0.0.1:{svc.port}", timeout=BUDGET + SLACK, headers=svc.headers
    )
    with client, ThreadPoolExecutor(max_workers=32) as pool:
        tick = cleared
        while not done.is_set():
            if time.monotonic() - cleared > timeout:
                raise AssertionError(f"no 200 within {timeout}s of the fault clearing")
            pool.submit(poll, client)
            tick += POLL_EVERY
            done.wait(max(tick - time.monotonic(), 0.0))
    return min(answered) - cleared


class _Load:
    """Background database traffic (``GET /api/leads`` in a loop) while in the block."""

    def __init__(self, svc: Service) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{svc.port}", timeout=BUDGET * 2, headers=svc.headers
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.client.get("/api/leads")
            except httpx.HTTPError:
                pass
            self.stop.wait(0.005)  # steady traffic, not a flood

    def __enter__(self) -> _Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(BUDGET * 3)
        self.client.close()


def _ping_p95(svc: Service) -> float:
    """p95 latency of the no-database route, with database traffic alongside."""
    times = []
    with _Load(svc):
        for _ in range(PING_SAMPLES):
            response, took = svc.get("/api/ping")
            assert response.status_code == 200, response.text
            times.append(took)
            time.sleep(0.01)
    return statistics.quantiles(times, n=20)[-1]


def _usual(p95: float, baseline: float) -> bool:
    return p95 <= max(baseline * PING_FACTOR, baseline + PING_MARGIN)


def _assert_clean_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert response.json() == PROBLEM


@pytest.mark.parametrize(("framework", "scenario"), CASES)
def test_web_service_rides_out_outage(
    framework: str,
    scenario: str,
    service_factory: Callable[..., Service],
    pg_proxy: Any,
    request: pytest.FixtureRequest,
) -> None:
    pg = request.getfixturevalue("pg_control") if scenario == "restart" else None
    svc = service_factory(framework)
    before = f"{framework}-{scenario}-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(before)[0].status_code == 201
    assert svc.get("/api/leads")[0].status_code == 200
    ping_before = _ping_p95(svc)

    timings: list[tuple[str, int, float]] = []
    begin_outage(scenario, pg_proxy, pg)
    try:
        for _ in range(6):
            response, took = svc.get("/api/leads")
            timings.append(("GET /api/leads", response.status_code, took))
            _assert_clean_503(response)
        response, took = svc.post_lead(f"{before}-during")
        timings.append(("POST /api/leads", response.status_code, took))
        _assert_clean_503(response)
        for path in ("/api/ping", "/health/live", "/health/ready"):
            response, took = svc.get(path)
            timings.append((path, response.status_code, took))
            assert response.status_code == 200, (path, response.text)
        assert svc.get("/health/ready")[0].json()["status"] == "warn"
        response, took = svc.get("/health/db")
        timings.append(("/health/db", response.status_code, took))
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/health+json")
        doc = response.json()
        assert doc["status"] == "fail"
        check = doc["checks"]["postgres:responseTime"][0]
        assert check["down_since"] and check["outages"] >= 1
        assert "postgresql://" not in response.text and "password" not in response.text
        ping_during = _ping_p95(svc)
        if not _usual(ping_during, ping_before):
            # A slowdown caused by the outage lasts as long as the outage; a
            # burst from the rest of this shared machine does not: look again.
            ping_during = min(ping_during, _ping_p95(svc))
    finally:
        end_outage(scenario, pg_proxy, pg)
    cleared = time.monotonic()
    recovered = _first_200(svc, cleared)
    print(f"\n{framework}/{scenario}: " + ", ".join(f"{p}={s} {t:.3f}s" for p, s, t in timings))
    print(
        f"{framework}/{scenario}: first 200 {recovered:.3f}s after the fault cleared;"
        f" /api/ping p95 {ping_before * 1000:.1f} ms before, {ping_during * 1000:.1f} ms during"
    )
    assert all(s != 500 for _p, s, _t in timings)
    assert max(t for _p, _s, t in timings) <= BUDGET + SLACK
    assert recovered <= RECOVERY_BOUND
    assert _usual(ping_during, ping_before), (ping_before, ping_during)
    _wait_for(lambda: svc.get("/health/db")[0].status_code == 200, timeout=10.0)
    after = f"{before}-after"
    assert svc.post_lead(after)[0].status_code == 201
    ids = {row["id"] for row in svc.get("/api/leads")[0].json()}
    assert {before, after} <= ids
    assert f"{before}-during" not in ids  # a 503 write was never applied
    # Nothing reached the server log as an error: no traceback from a session
    # closed after the link died, no reset of a client's connection.
    assert "Traceback" not in svc.log(), svc.log()[-3000:]
