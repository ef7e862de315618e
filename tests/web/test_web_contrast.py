"""The same example services without outlast (OUTLAST_ENABLED=0): 500s or hangs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import BUDGET, Service

HANG = BUDGET + 3.0  # a client gives up after this long


def _outcome(svc: Service) -> str:
    start = time.monotonic()
    try:
        response = svc.client.get("/api/leads", timeout=HANG)
    except httpx.TimeoutException:
        return "hang"
    took = time.monotonic() - start
    return f"{response.status_code}" if took <= BUDGET else f"{response.status_code}-late"


@pytest.mark.parametrize("framework", ["fastapi", "flask", "django"])
def test_without_outlast_a_refused_database_gives_500s(
    framework: str, service_factory: Callable[..., Service], pg_proxy: Any
) -> None:
    svc = service_factory(framework, enabled=False)
    assert svc.get("/api/leads")[0].status_code == 200
    with pg_proxy.fault("down"):
        outcomes = [_outcome(svc) for _ in range(3)]
    print(f"\nwithout outlast, {framework}/down: {outcomes}")
    assert outcomes and all(o == "500" for o in outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["fastapi", "flask", "django"])
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
