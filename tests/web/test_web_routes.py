"""Starlette/FastAPI apps as people build them: routers with prefixes, mounts, static files, CORS.

In-process (the ASGI app called through httpx), with a Guard whose breaker is
opened by hand and a fake clock: what is checked is what outlast decides for
each kind of route, not the database. The real-server tests
(test_web_adoption.py) run the same rules against the examples.

This module imports nothing but FastAPI, Starlette, httpx and outlast, so
``test_web_versions.py`` runs it again under the oldest FastAPI and Starlette
the ``[fastapi]`` extra allows.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import outlast
from outlast.starlette import db_route, install, no_db
from outlast.testing import ManualClock

ORIGIN = "https://app.example.com"


def _refused() -> Exception:
    import psycopg

    return psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )


def _guard(clock: ManualClock) -> outlast.Guard:
    return outlast.Guard(
        "routes",
        retry=outlast.Retry(attempts=1),
        breaker=outlast.Breaker(failure_threshold=1, open_for=1.0, max_open_for=1.0),
        clock=clock,
        listeners=[],
    )


class Calls:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, name: str) -> None:
        self.seen.append(name)


@pytest.fixture
def static_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "hello.txt").write_text("hello")
        yield Path(tmp)


def _app(guard: outlast.Guard, calls: Calls, static: Path, *, cors_first: bool) -> FastAPI:
    app = FastAPI()

    def cors() -> None:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=[ORIGIN],
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After"],
        )

    if cors_first:
        cors()  # where the FastAPI docs put it: before everything else
    web = install(app, guard=guard, budget=5.0)
    if not cors_first:
        cors()

    def require_token(authorization: str | None = None) -> None:
        raise HTTPException(401, "no token")

    async def query() -> str:
        calls("query")
        return "rows"

    items = APIRouter(prefix="/items")

    @items.get("/{item_id}")
    async def get_item(item_id: int) -> Any:
        calls("get_item")
        return {"item": item_id, "rows": await web.acall(query)}

    @items.get("/{item_id}/marked")
    @db_route
    async def marked_item(item_id: int) -> Any:
        calls("marked_item")
        return {"item": item_id}

    @items.get("/{item_id}/cached")
    @no_db
    async def cached_item(item_id: int) -> Any:
        calls("cached_item")
        return {"item": item_id, "cached": True}

    @items.get("/{item_id}/broken")
    async def broken_item(item_id: int) -> Any:
        raise _refused()  # a driver error from an engine outlast does not watch

    secret = APIRouter(prefix="/secret", dependencies=[Depends(require_token)])

    @secret.get("/data")
    async def secret_data() -> Any:
        calls("secret_data")
        return {"rows": await web.acall(query)}

    api = APIRouter(prefix="/api")
    api.include_router(items)
    api.include_router(secret)

    @api.get("/ping")
    async def ping() -> Any:
        return {"ok": True}

    app.include_router(api)

    async def sub_marked(request: Any) -> JSONResponse:
        calls("sub_marked")
        return JSONResponse({"ok": True})

    sub = Starlette(routes=[Route("/marked", db_route(sub_marked))])
    app.mount("/sub", sub)
    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def _client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30.0)


def _open(guard: outlast.Guard) -> None:
    guard.record_failure(_refused())
    assert guard.breaker_state == "open"


@pytest.mark.parametrize("cors_first", [True, False], ids=["cors-before", "cors-after"])
async def test_while_open_only_requests_that_reach_for_the_database_get_503s(
    static_dir: Path, cors_first: bool
) -> None:
    clock, calls = ManualClock(), Calls()
    guard = _guard(clock)
    app = _app(guard, calls, static_dir, cors_first=cors_first)
    _open(guard)
    headers = {"Origin": ORIGIN}
    async with _client(app) as client:
        # Reached for the database: a fast 503, with CORS headers in either order.
        for path in ("/api/items/1", "/api/items/1/marked", "/sub/marked"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 503, (path, response.text)
            assert response.headers["access-control-allow-origin"] == ORIGIN, path
            assert int(response.headers["retry-after"]) >= 1
        # A route marked db_route is refused before it runs; an unmarked one
        # runs, and is refused where it reaches for the database.
        assert calls.seen == ["get_item"]
        # Never reached for it: answered as without outlast.
        for path, status in (
            ("/api/ping", 200),
            ("/api/items/1/cached", 200),
            ("/static/hello.txt", 200),
            ("/static/missing.txt", 404),
            ("/api/secret/data", 401),
            ("/nowhere", 404),
            ("/health/live", 200),
        ):
            response = await client.get(path, headers=headers)
            assert response.status_code == status, (path, response.text)
        assert "query" not in calls.seen


async def test_half_open_only_a_request_that_reached_the_database_is_the_probe(
    static_dir: Path,
) -> None:
    clock, calls = ManualClock(), Calls()
    guard = _guard(clock)
    app = _app(guard, calls, static_dir, cors_first=True)
    _open(guard)
    clock.advance(1.0)
    assert guard.breaker_state == "half_open"
    async with _client(app) as client:
        # A 401 before any query, a static file, a 404, a route that needs no
        # database: none of them says anything about the database.
        for path in ("/api/secret/data", "/static/hello.txt", "/nowhere", "/api/ping"):
            await client.get(path)
            assert guard.breaker_state == "half_open", path
            assert not guard.state.up
        # A driver error from code outlast does not watch still proves the
        # request reached the database: it is the probe's answer.
        assert (await client.get("/api/items/1/broken")).status_code == 503
        assert guard.breaker_state == "open"
        clock.advance(1.0)
        # The first request that reaches the database is the probe; its 200 closes it.
        assert (await client.get("/api/items/7")).status_code == 200
        assert guard.breaker_state == "closed" and guard.state.up


async def test_log_lines_name_the_route_with_its_prefix(
    static_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, calls = ManualClock(), Calls()
    guard = _guard(clock)
    app = _app(guard, calls, static_dir, cors_first=True)
    _open(guard)
    caplog.set_level(logging.DEBUG, logger="outlast")
    async with _client(app) as client:
        assert (await client.get("/api/items/42")).status_code == 503
        assert (await client.get("/sub/marked")).status_code == 503
    routes = [getattr(r, "outlast_route", None) for r in caplog.records]
    assert "GET /api/items/{item_id}" in routes
    assert "GET /sub/marked" in routes


async def test_install_after_the_app_started_is_refused() -> None:
    app = FastAPI()
    install(app, guard=outlast.Guard("late", listeners=[]))
    async with _client(app) as client:
        assert (await client.get("/health/live")).status_code == 200
    with pytest.raises(outlast.ConfigurationError):
        install(app, guard=outlast.Guard("late2", listeners=[]))


async def test_a_plain_starlette_app_with_mounts_and_marks() -> None:
    clock = ManualClock()
    guard = _guard(clock)

    async def data(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def ping(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Mount("/v1", routes=[Route("/data", db_route(data)), Route("/ping", no_db(ping))]),
        ]
    )
    install(app, guard=guard)
    _open(guard)
    async with _client(app) as client:
        assert (await client.get("/v1/data")).status_code == 503
        assert (await client.get("/v1/ping")).status_code == 200
