"""``/health/db`` never calls a silent database healthy; a frozen link opens the breaker.

Real servers on loopback (uvicorn for FastAPI, werkzeug for Flask, each in a
thread of the test process so the test can read its Guard), the database
behind the chaos proxy. With the link blackholed or frozen, every database
request runs into its budget and answers 503 -- a timeout of the request, not
an answer, so neither a success nor an outage. Then:

- without a ping, ``/health/db`` reports the Guard's state, and "nothing
  failed" is not "it answered": it is 503 until the server answers again;
- with a ping, a ``SELECT 1`` that gets no answer within ``health_timeout``
  is a failure the Guard counts, so polling ``/health/db`` opens the breaker
  and the next database request is refused at once, without touching the
  database.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import Request  # module level: FastAPI resolves the annotation by name

import outlast
import outlast.asyncpg
import outlast.sqlalchemy
from outlast.testing._postgres import free_port

BUDGET = 1.0


@contextmanager
def asgi_server(app: Any) -> Iterator[httpx.Client]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def wsgi_server(app: Any) -> Iterator[httpx.Client]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-test", daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30.0) as client:
            yield client
    finally:
        server.shutdown()
        thread.join(30)


def _guard(name: str) -> outlast.Guard:
    return outlast.Guard(
        name,
        retry=outlast.Retry(attempts=2),
        breaker=outlast.Breaker(failure_threshold=3, open_for=30.0, max_open_for=30.0),
    )


def _assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1


def _db_health(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/db")
    assert response.headers["content-type"].startswith("application/health+json")
    return response.status_code, response.json()


# --------------------------------------------------------------------------- FastAPI


@pytest.fixture
def fastapi_pool_app(pg_proxy: Any, pg_database: Any) -> Iterator[tuple[Any, outlast.Guard]]:
    """FastAPI with an asyncpg pool opened at start-up, as users write it; no ping given."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from outlast.starlette import install

    guard = _guard("fastapi-pool")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        app.state.pool = await outlast.asyncpg.create_pool(
            pg_proxy.url(pg_database.name, driver=None), guard=guard, min_size=2, max_size=4
        )
        yield
        await asyncio.wait_for(app.state.pool.close(), 10)

    app = FastAPI(lifespan=lifespan)
    install(app, guard=guard, budget=BUDGET)

    @app.get("/api/leads")
    async def leads(request: Request) -> Any:
        pool = request.app.state.pool
        return {"n": await pool.fetchval("SELECT count(*) FROM pg_class")}

    yield app, guard


def test_fastapi_state_only_health_is_not_fooled_by_timeouts(
    fastapi_pool_app: tuple[Any, outlast.Guard], pg_proxy: Any
) -> None:
    app, guard = fastapi_pool_app
    with asgi_server(app) as client:
        assert client.get("/api/leads").status_code == 200
        assert _db_health(client)[0] == 200
        with pg_proxy.fault("blackhole"):
            for _ in range(3):
                _assert_503(client.get("/api/leads"))  # each one ran into its budget
            status, doc = _db_health(client)
            assert status == 503, doc  # not 200: nothing answered
            check = doc["checks"]["postgres:responseTime"][0]
            assert check["status"] == "fail" and check["output"].startswith("timeout")
        # The server answers again: so does /health/db.
        deadline = time.monotonic() + 30
        while client.get("/api/leads").status_code != 200:
            assert time.monotonic() < deadline, "no 200 after the fault cleared"
            time.sleep(0.1)
        assert _db_health(client)[0] == 200
    assert guard.state.answering


@pytest.fixture
def fastapi_engine_app(pg_proxy: Any, pg_database: Any) -> Iterator[tuple[Any, outlast.Guard]]:
    """FastAPI on a hardened async engine (asyncpg), /health/db pinging through it."""
    from fastapi import FastAPI

    from outlast.starlette import install

    guard = _guard("fastapi-engine")
    engine = outlast.sqlalchemy.create_async_engine(
        pg_proxy.url(pg_database.name, driver="asyncpg"), guard=guard
    )
    app = FastAPI()
    web = install(app, guard=guard, budget=BUDGET, engine=engine, health_timeout=BUDGET)

    @app.get("/api/leads")
    async def leads() -> Any:
        async def fetch() -> Any:
            async with engine.connect() as conn:
                return (await conn.exec_driver_sql("SELECT 1")).scalar()

        return {"n": await web.acall(fetch, idempotent=True)}

    yield app, guard
    asyncio.run(engine.dispose())


def test_fastapi_a_frozen_link_opens_the_breaker_through_health_polls(
    fastapi_engine_app: tuple[Any, outlast.Guard], pg_proxy: Any
) -> None:
    app, guard = fastapi_engine_app
    with asgi_server(app) as client:
        assert client.get("/api/leads").status_code == 200
        with pg_proxy.fault("freeze"):
            _assert_503(client.get("/api/leads"))
            polls = 0
            while guard.breaker_state != "open":
                assert polls < 10, guard.state
                assert _db_health(client)[0] == 503
                polls += 1
            # Open: the next request is refused without reaching the database.
            before = pg_proxy.stats()["total_connections"]
            response = client.get("/api/leads")
            _assert_503(response)
            assert pg_proxy.stats()["total_connections"] == before
            status, doc = _db_health(client)
            assert status == 503 and doc["checks"]["postgres:responseTime"][0]["breaker"] == "open"
    print(f"\nfastapi freeze: breaker open after {polls} /health/db polls")


# --------------------------------------------------------------------------- Flask


@pytest.fixture
def flask_app(pg_proxy: Any, pg_database: Any) -> Iterator[tuple[Any, outlast.Guard]]:
    """Flask with a hardened engine and a scoped session, as in the README; no ping given."""
    from flask import Flask
    from sqlalchemy import text
    from sqlalchemy.orm import scoped_session, sessionmaker

    from outlast.flask import Outlast

    guard = _guard("flask")
    engine = outlast.sqlalchemy.create_engine(pg_proxy.url(pg_database.name), guard=guard)
    session = scoped_session(sessionmaker(bind=engine))
    app = Flask("health-evidence")
    web = Outlast(app, guard=guard, budget=BUDGET, session=session)

    @app.get("/api/leads")
    def leads() -> Any:
        return {"n": web.call(lambda: session.execute(text("SELECT 1")).scalar(), idempotent=True)}

    @app.get("/api/slow")
    def slow() -> Any:
        return {"n": session.execute(text("SELECT pg_sleep(0.6)::text")).scalar()}

    @app.teardown_appcontext
    def remove(exc: BaseException | None) -> None:
        session.remove()

    yield app, guard
    engine.dispose()


def _when_sleeping(dsn: str, then: Callable[[], object]) -> threading.Thread:
    """Run `then` once a backend is inside pg_sleep (bounded wait)."""

    def watch() -> None:
        deadline = time.monotonic() + 20
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                ).fetchone()
                if row is not None:
                    break
                time.sleep(0.02)
        then()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_flask_a_link_frozen_mid_request_is_not_health(
    flask_app: tuple[Any, outlast.Guard], pg_proxy: Any, pg_database: Any
) -> None:
    app, guard = flask_app
    with wsgi_server(app) as client:
        assert client.get("/api/leads").status_code == 200
        assert _db_health(client)[0] == 200
        # The link freezes while the statement is in the server: the reply
        # never comes back and the request's budget ends it.
        watcher = _when_sleeping(pg_database.dsn(), lambda: pg_proxy.add_fault("freeze"))
        try:
            _assert_503(client.get("/api/slow"))
            watcher.join(30)
            assert guard.state.up and guard.breaker_state == "closed"  # no outage proven
            status, doc = _db_health(client)
            assert status == 503, doc  # and no answer either
        finally:
            pg_proxy.clear()
        deadline = time.monotonic() + 30
        while client.get("/api/leads").status_code != 200:
            assert time.monotonic() < deadline, "no 200 after the fault cleared"
            time.sleep(0.1)
        assert _db_health(client)[0] == 200
