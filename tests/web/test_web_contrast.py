"""The same example services without outlast (OUTLAST_ENABLED=0): 500s or hangs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import BUDGET, Service, begin_outage, end_outage

HANG = BUDGET + 3.0  # a client gives up after this long


def _outcome(svc: Service) -> str:
    start = time.monotonic()
    try:
        response = svc.client.get("/api/leads", timeout=HANG)
    except httpx.TimeoutException:
        return "hang"
    except httpx.TransportError:
        # uvicorn drops the keep-alive connection after an unhandled error:
        # the next request on it sees a reset.
        return "reset"
    took = time.monotonic() - start
    return f"{response.status_code}" if took <= BUDGET else f"{response.status_code}-late"


RESTART = pytest.param("restart", marks=[pytest.mark.slow, pytest.mark.destructive])


@pytest.mark.parametrize("scenario", ["down", "neon_endpoint_disabled", "terminate", RESTART])
@pytest.mark.parametrize("framework", ["fastapi", "flask"])  # Django: test_django_drf.py
def test_without_outlast_a_refused_database_gives_500s(
    framework: str,
    scenario: str,
    service_factory: Callable[..., Service],
    pg_proxy: Any,
    request: pytest.FixtureRequest,
) -> None:
    pg = request.getfixturevalue("pg_control") if scenario == "restart" else None
    svc = service_factory(framework, enabled=False)
    assert svc.get("/api/leads")[0].status_code == 200
    begin_outage(scenario, pg_proxy, pg)
    try:
        outcomes = [_outcome(svc) for _ in range(3)]
    finally:
        end_outage(scenario, pg_proxy, pg)
    cleared = time.monotonic()
    after = _outcome(svc)
    while after != "200" and time.monotonic() - cleared < 30:
        time.sleep(0.05)
        after = _outcome(svc)
    print(
        f"\nwithout outlast, {framework}/{scenario}: {outcomes};"
        f" first 200 {time.monotonic() - cleared:.3f}s after the fault cleared"
    )
    assert "500" in outcomes
    assert set(outcomes) <= {"500", "reset"}


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask"])  # Django: test_django_drf.py
def test_without_outlast_a_blackholed_database_hangs_requests(
    framework: str, service_factory: Callable[..., Service], pg_proxy: Any
) -> None:
    svc = service_factory(framework, enabled=False)
    assert svc.get("/api/leads")[0].status_code == 200
    with pg_proxy.fault("blackhole"):
        outcome = _outcome(svc)
    print(f"\nwithout outlast, {framework}/blackhole: {outcome}")
    assert outcome == "hang" or outcome.endswith("-late") or outcome == "500"
    assert outcome != "503"
