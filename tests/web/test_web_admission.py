"""The integrations' admission in-process: every way a probe request ends frees its slot.

The real-server tests (test_web_probe.py) count what reaches the database; these
drive the ends that a live server makes awkward to reach on purpose: a
request cancelled mid-probe (the client went away, the server shuts down),
an ``after_request`` hook that raises, a 503 the view built by itself, and
FastAPI's `require_database` dependency on a route the middleware skips.
The Guard has a fake clock, the database error is psycopg's own; the apps are real.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

import outlast
from outlast import Breaker, DatabaseUnavailable, Retry
from outlast.testing import ManualClock


def _refused() -> Exception:
    """What psycopg raises when the server refuses the connection."""
    import psycopg

    return psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )


def _half_open_guard() -> tuple[outlast.Guard, ManualClock]:
    clock = ManualClock()
    guard = outlast.Guard(
        "admission",
        retry=Retry(attempts=1),
        breaker=Breaker(failure_threshold=1, open_for=1.0, max_open_for=1.0, probe_timeout=600),
        clock=clock,
        listeners=[],
    )
    guard.record_failure(_refused())
    clock.advance(1.0)
    assert guard.breaker_state == "half_open"
    return guard, clock


def _slot_free(guard: outlast.Guard) -> bool:
    """Would the next request be admitted (as the probe)?"""
    import contextvars

    def attempt() -> bool:
        try:
            guard.admit(op="next").release(verdict=False)
        except DatabaseUnavailable:
            return False
        return True

    return contextvars.Context().run(attempt)


# --------------------------------------------------------------------------- Starlette


def _asgi_client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30.0)


async def test_starlette_a_cancelled_probe_frees_the_slot() -> None:
    from fastapi import FastAPI

    from outlast.starlette import install

    guard, _ = _half_open_guard()
    app = FastAPI()
    install(app, guard=guard, budget=30.0)
    entered, never = asyncio.Event(), asyncio.Event()

    @app.get("/hold")
    async def hold() -> Any:
        guard.check()  # a hardened pool's checkout inside the probe: let through
        entered.set()
        await never.wait()  # the database keeps the probe waiting
        return {}

    async with _asgi_client(app) as client:
        probe = asyncio.create_task(client.get("/hold"))
        await asyncio.wait_for(entered.wait(), 10)
        other = await client.get("/hold")
        assert other.status_code == 503 and int(other.headers["retry-after"]) >= 1
        assert not _slot_free(guard)
        probe.cancel()  # the client went away / the server is stopping
        with pytest.raises(asyncio.CancelledError):
            await probe
    assert guard.breaker_state == "half_open"  # a cancellation says nothing
    assert _slot_free(guard)


async def test_starlette_a_sync_endpoint_in_the_thread_pool_is_part_of_the_probe() -> None:
    from fastapi import FastAPI

    from outlast.starlette import install

    guard, _ = _half_open_guard()
    app = FastAPI()
    install(app, guard=guard, budget=30.0)

    @app.get("/sync")
    def sync_view() -> Any:
        guard.check()  # runs in a worker thread with a copy of the request's context
        return {"n": guard.call(lambda: 1)}

    async with _asgi_client(app) as client:
        response = await client.get("/sync")
    assert response.status_code == 200, response.text
    assert guard.breaker_state == "closed"


async def test_starlette_a_fault_answered_by_the_exception_handler_reopens_the_breaker() -> None:
    from fastapi import FastAPI

    from outlast.starlette import install

    guard, _ = _half_open_guard()
    app = FastAPI()
    install(app, guard=guard, budget=30.0, record_faults=False)

    @app.get("/fails")
    async def fails() -> Any:
        raise _refused()

    async with _asgi_client(app) as client:
        response = await client.get("/fails")
    assert response.status_code == 503
    # Not reported by the web layer (record_faults=False): the probe's own end counted it.
    assert guard.breaker_state == "open"


async def test_require_database_admits_one_probe_on_a_route_the_middleware_skips() -> None:
    from fastapi import Depends, FastAPI

    from outlast.starlette import install, require_database

    guard, _ = _half_open_guard()
    app = FastAPI()
    install(app, guard=guard, budget=30.0, db_routes="marked")
    entered, go = asyncio.Event(), asyncio.Event()
    ran = []

    @app.get("/reports", dependencies=[Depends(require_database)])
    async def reports() -> Any:
        ran.append(1)
        entered.set()
        await go.wait()
        return {}

    async with _asgi_client(app) as client:
        probe = asyncio.create_task(client.get("/reports"))
        await asyncio.wait_for(entered.wait(), 10)
        others = await asyncio.gather(*(client.get("/reports") for _ in range(10)))
        assert [r.status_code for r in others] == [503] * 10
        assert ran == [1]
        go.set()
        assert (await probe).status_code == 200
    assert guard.breaker_state == "closed"


# --------------------------------------------------------------------------- Flask


def _flask_app(guard: outlast.Guard) -> Any:
    from flask import Flask

    from outlast.flask import Outlast

    app = Flask("admission")
    Outlast(app, guard=guard, budget=30.0)

    @app.get("/ok")
    def ok() -> Any:
        guard.check()  # inside the probe: let through
        return {"ok": True}

    @app.get("/self-503")
    def self_503() -> Any:
        return {"error": "busy"}, 503

    @app.get("/bug")
    def bug() -> Any:
        raise KeyError("a bug in the view")

    return app


def test_flask_a_5xx_the_view_built_itself_frees_the_slot_without_a_verdict() -> None:
    guard, _ = _half_open_guard()
    client = _flask_app(guard).test_client()
    assert client.get("/self-503").status_code == 503
    assert guard.breaker_state == "half_open"
    assert _slot_free(guard)
    assert client.get("/ok").status_code == 200
    assert guard.breaker_state == "closed"


def test_flask_an_unrelated_error_in_the_view_frees_the_slot() -> None:
    guard, _ = _half_open_guard()
    client = _flask_app(guard).test_client()
    assert client.get("/bug").status_code == 500
    assert guard.breaker_state == "half_open"
    assert _slot_free(guard)


def test_flask_an_after_request_hook_that_raises_still_frees_the_slot() -> None:
    guard, _ = _half_open_guard()
    app = _flask_app(guard)

    @app.after_request
    def broken(response: Any) -> Any:
        raise RuntimeError("a broken hook")

    assert app.test_client().get("/ok").status_code == 500
    assert _slot_free(guard)


def test_flask_a_database_fault_escaping_the_probe_reopens_the_breaker() -> None:
    guard, _ = _half_open_guard()
    app = _flask_app(guard)

    @app.get("/down")
    def down() -> Any:
        raise _refused()

    response = app.test_client().get("/down")
    assert response.status_code == 503
    assert guard.breaker_state == "open"
    assert guard.state.failures == 2  # the first trip and this probe: counted once
