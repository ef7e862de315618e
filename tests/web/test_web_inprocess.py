"""The integrations in-process (framework test clients) against the real database."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from sqlalchemy import event, text

import outlast

SECRET = "hunter2-param"


def _assert_generic_500(body: str) -> None:
    for leak in ("no_such_table", SECRET, "SELECT", "127.0.0.1", "Traceback"):
        assert leak not in body


def _fast_guard(name: str) -> outlast.Guard:
    return outlast.Guard(
        name,
        retry=outlast.Retry(attempts=1),
        breaker=outlast.Breaker(failure_threshold=2, open_for=30.0, max_open_for=30.0),
    )


# --------------------------------------------------------------------------- Flask


@pytest.fixture
def flask_app(pg_proxy: Any, pg_database: Any) -> Any:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from outlast.flask import Outlast, no_db

    app = Flask("inproc")
    url = pg_proxy.url(pg_database.name)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": {"connect_timeout": 2}}
    db = SQLAlchemy(app)
    guard = _fast_guard("flask-inproc")
    ext = Outlast(app, guard=guard, budget=5.0)
    rollbacks: list[int] = []
    # Every Session.rollback() of db.session (the integration's included).
    event.listen(db.session, "after_soft_rollback", lambda session, prev: rollbacks.append(1))

    @app.get("/leads")
    def leads() -> Any:
        return {"n": db.session.execute(text("SELECT 1")).scalar()}

    @app.get("/bad")
    def bad() -> Any:
        db.session.execute(text("SELECT * FROM no_such_table WHERE x = :p"), {"p": SECRET})
        return {}

    @app.get("/ping")
    @no_db
    def ping() -> Any:
        return {"ok": True}

    app.config["TESTING"] = False
    app.extensions["test_rollbacks"] = rollbacks
    app.extensions["test_guard"] = guard
    assert ext.guard is guard
    yield app
    with app.app_context():
        db.engine.dispose()


def test_flask_permanent_fault_is_a_generic_500_logged_once(
    flask_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = flask_app.test_client()
    with caplog.at_level(logging.INFO, logger="outlast"):
        response = client.get("/bad")
    assert response.status_code == 500
    assert response.content_type == "application/problem+json"
    _assert_generic_500(response.get_data(as_text=True))
    lines = [r.getMessage() for r in caplog.records if "[DB_ERROR]" in r.getMessage()]
    assert len(lines) == 1 and "route=GET /bad" in lines[0] and SECRET not in lines[0]
    assert flask_app.extensions["test_guard"].state.up  # a bug is not an outage


def test_flask_sqlalchemy_session_is_rolled_back_and_breaker_fails_fast(
    flask_app: Any, pg_proxy: Any
) -> None:
    client = flask_app.test_client()
    assert client.get("/leads").status_code == 200
    rollbacks = flask_app.extensions["test_rollbacks"]
    with pg_proxy.fault("down"):
        before = len(rollbacks)
        first = client.get("/leads")
        assert first.status_code == 503 and int(first.headers["Retry-After"]) >= 1
        assert len(rollbacks) == before + 1  # the failed request's session, once
        assert client.get("/leads").status_code == 503
        assert len(rollbacks) == before + 2
        # Two faults opened the breaker: now no database is touched at all.
        start = time.monotonic()
        fast = client.get("/leads")
        assert fast.status_code == 503 and time.monotonic() - start < 0.5
        assert int(fast.headers["Retry-After"]) >= 2
        assert client.get("/ping").status_code == 200
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/db").status_code == 503
    guard = flask_app.extensions["test_guard"]
    assert guard.state.down and guard.state.outages == 1


# --------------------------------------------------------------------------- FastAPI


@pytest.fixture
async def fastapi_app(pg_proxy: Any, pg_database: Any) -> Any:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import create_async_engine

    from outlast.starlette import db_route, install, no_db

    engine = create_async_engine(
        pg_proxy.url(pg_database.name), connect_args={"connect_timeout": 2}
    )
    app = FastAPI()
    guard = _fast_guard("fastapi-inproc")
    web = install(app, guard=guard, budget=1.0, engine=engine)
    calls: list[str] = []

    @app.get("/leads")
    async def leads() -> Any:
        calls.append("leads")

        async def fetch() -> Any:
            async with engine.connect() as conn:
                return (await conn.exec_driver_sql("SELECT 1")).scalar()

        return {"n": await web.acall(fetch, idempotent=True)}

    @app.get("/bad")
    async def bad() -> Any:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table WHERE x = :p"), {"p": SECRET})
        return {}

    @app.get("/slow")
    async def slow() -> Any:
        async def never_answers() -> None:
            await asyncio.sleep(30)

        await web.acall(never_answers)  # a database call that never answers
        return {}

    @app.get("/slow-elsewhere")
    async def slow_elsewhere() -> Any:
        await asyncio.sleep(1.5)  # another service, not the database: not cut short
        return {"ok": True}

    @app.get("/marked")
    @db_route
    async def marked() -> Any:
        calls.append("marked")
        async with engine.connect() as conn:
            return {"n": (await conn.exec_driver_sql("SELECT 1")).scalar()}

    @app.get("/ping")
    @no_db
    async def ping() -> Any:
        return {"ok": True}

    app.state.calls = calls
    app.state.guard = guard
    yield app
    await engine.dispose()


def _client(app: Any) -> Any:
    import httpx

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30.0)


async def test_fastapi_permanent_fault_is_a_generic_500(fastapi_app: Any) -> None:
    async with _client(fastapi_app) as client:
        response = await client.get("/bad")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    _assert_generic_500(response.text)


async def test_fastapi_request_budget_turns_a_hang_into_a_503(fastapi_app: Any) -> None:
    async with _client(fastapi_app) as client:
        start = time.monotonic()
        response = await client.get("/slow")
        took = time.monotonic() - start
    assert response.status_code == 503 and response.json()["error"] == "SERVICE_UNAVAILABLE"
    assert took < 3.0  # budget is 1 s


async def test_fastapi_a_slow_route_that_never_reaches_the_database_is_not_cut(
    fastapi_app: Any,
) -> None:
    async with _client(fastapi_app) as client:
        response = await client.get("/slow-elsewhere")  # 1.5 s, the budget is 1 s
    assert response.status_code == 200


async def test_fastapi_open_breaker_answers_without_running_the_route(
    fastapi_app: Any, pg_proxy: Any
) -> None:
    async with _client(fastapi_app) as client:
        assert (await client.get("/leads")).status_code == 200
        with pg_proxy.fault("down"):
            assert (await client.get("/leads")).status_code == 503
            assert (await client.get("/leads")).status_code == 503
            ran = len(fastapi_app.state.calls)
            connections = pg_proxy.stats()["total_connections"]
            response = await client.get("/leads")
            assert response.status_code == 503 and "retry-after" in response.headers
            # Admitted on first use: the route ran, and web.acall answered for the
            # breaker before anything reached the database.
            assert len(fastapi_app.state.calls) == ran + 1
            assert pg_proxy.stats()["total_connections"] == connections
            # A route marked db_route is admitted before it runs.
            ran = len(fastapi_app.state.calls)
            marked = await client.get("/marked")
            assert marked.status_code == 503 and "retry-after" in marked.headers
            assert len(fastapi_app.state.calls) == ran
            assert (await client.get("/ping")).status_code == 200
            db = await client.get("/health/db")
            assert db.status_code == 503
            assert db.headers["content-type"].startswith("application/health+json")
            ready = await client.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "warn"


async def test_fastapi_an_autocommit_write_whose_answer_was_lost_is_outcome_unknown(
    pg_proxy: Any, pg_database: Any
) -> None:
    """A write outside any transaction has no COMMIT to resolve: its lost answer is unknown."""
    from fastapi import FastAPI

    import outlast.sqlalchemy
    from outlast.starlette import install

    guard = _fast_guard("autocommit")
    engine = outlast.sqlalchemy.create_engine(
        pg_proxy.url(pg_database.name), guard=guard, isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS ac_writes (id text)"))
    app = FastAPI()
    install(app, guard=guard, budget=5.0)

    @app.post("/write/{key}")
    def write(key: str) -> Any:
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO ac_writes (id) VALUES (:k)"), {"k": key})
        return {"ok": True}

    @app.get("/read")
    def read() -> Any:
        with engine.connect() as conn:
            return {"n": conn.execute(text("SELECT count(*) FROM ac_writes")).scalar()}

    try:
        async with _client(app) as client:
            assert (await client.post("/write/warm")).status_code == 200
            with pg_proxy.fault("cut_after", pattern="INSERT INTO ac_writes", count=1):
                lost = await client.post("/write/lost")
            assert lost.status_code == 503
            assert lost.json()["error"] == "OUTCOME_UNKNOWN"  # it was in fact applied
            with pg_proxy.fault("cut_after", pattern="SELECT count", count=1):
                read_lost = await client.get("/read")
            assert read_lost.status_code == 503
            assert read_lost.json()["error"] == "SERVICE_UNAVAILABLE"  # a read changes nothing
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM ac_writes WHERE id = 'lost'"))
            assert stored.scalar() == 1
    finally:
        engine.dispose()


def test_flask_psycopg_pools_admit_a_request_at_its_first_statement(
    pg_proxy: Any, pg_database: Any
) -> None:
    """An idle psycopg pool connection is handed out without asking the breaker:
    the request is admitted at its first statement (psycopg 3) or at the
    checkout (outlast's psycopg2 pool)."""
    from flask import Flask

    import outlast.psycopg
    import outlast.psycopg2
    from outlast.flask import Outlast

    guard = _fast_guard("pools")
    pool = outlast.psycopg.ConnectionPool(
        pg_proxy.dsn(pg_database.name), guard=guard, min_size=1, open=True
    )
    pool2 = outlast.psycopg2.ConnectionPool(pg_proxy.dsn(pg_database.name), guard=guard)
    app = Flask("pools")
    Outlast(app, guard=guard, budget=5.0)
    ran: list[str] = []

    @app.get("/v3")
    def v3() -> Any:
        ran.append("v3")
        with pool.connection() as conn:
            return {"n": conn.execute("SELECT 1").fetchone()[0]}  # type: ignore[index]

    @app.get("/v2")
    def v2() -> Any:
        ran.append("v2")
        with pool2.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return {"n": cur.fetchone()[0]}  # type: ignore[index]

    @app.get("/ping")
    def ping() -> Any:
        return {"ok": True}

    try:
        client = app.test_client()
        assert client.get("/v3").status_code == 200 and client.get("/v2").status_code == 200
        for _ in range(3):
            guard.record_failure(_refused_error())
        assert guard.breaker_state == "open"
        connections = pg_proxy.stats()["total_connections"]
        for path in ("/v3", "/v2"):
            response = client.get(path)
            assert response.status_code == 503, response.text
        assert ran.count("v3") == 2 and ran.count("v2") == 2  # they ran, and were refused
        assert pg_proxy.stats()["total_connections"] == connections  # nothing new opened
        assert client.get("/ping").status_code == 200
    finally:
        pool.close()
        pool2.close()


def _refused_error() -> Exception:
    import psycopg

    return psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused'
    )
