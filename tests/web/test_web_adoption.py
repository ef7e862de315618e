"""The examples, real apps with outlast added in a few lines, on real servers behind the proxy.

``examples/fastapi_app.py`` (uvicorn) and ``examples/flask_app.py`` (gunicorn)
are written as apps are: sessions injected with ``Depends`` / Flask-
SQLAlchemy's ``db.session``, routers and blueprints under prefixes, a Bearer
token in front of the data routes, CORS, a ping and a health route that never
touch the database, a static file. What adding outlast must not break, and
what it must add:

- a route that works without the database keeps working during an outage:
  no 503 for the ping, the health route, a static file, a 401;
- while the breaker is half-open none of those closes it (only a request that
  reached the database is the probe): ``/health/ready`` keeps saying the
  database is down for as long as it is;
- a 503 from a data route carries the CORS headers (FastAPI: the middleware
  was added before ``install()``, where the FastAPI docs put it);
- an ordinary ``session.commit()`` whose COMMIT never reached the server is a
  503 ``SERVICE_UNAVAILABLE`` (not applied, and indeed not stored), and
  nothing lands in the server log as a traceback.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from conftest import Server, Service, spawn, wait_until_up

from outlast.testing._postgres import free_port

APPS = Path(__file__).resolve().parent / "probe_apps"

ORIGIN = "https://app.example.com"  # what the FastAPI example's CORS allows
NO_DB = {
    "fastapi": [("/api/ping", 200), ("/healthz", 200), ("/static/hello.txt", 200)],
    "flask": [("/api/ping", 200), ("/healthz", 200)],
}
OPEN_FOR = 0.5  # Guard.for_web()


def _database_status(svc: Service) -> str:
    doc = svc.get("/health/ready")[0].json()
    return str(doc["checks"]["postgres:connection"][0]["status"])


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_routes_that_need_no_database_stay_up_and_never_close_the_breaker(
    framework: str, service_factory: Callable[..., Service], pg_proxy: Any
) -> None:
    svc = service_factory(framework)
    assert svc.get("/api/leads")[0].status_code == 200
    anonymous = httpx.Client(base_url=f"http://127.0.0.1:{svc.port}", timeout=30.0)
    with anonymous, pg_proxy.fault("down"):
        response = svc.client.get("/api/leads", headers={"Origin": ORIGIN})
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) >= 1
        if framework == "fastapi":
            assert response.headers["access-control-allow-origin"] == ORIGIN
            assert "retry-after" in response.headers["access-control-expose-headers"].lower()
        assert _database_status(svc) == "warn"
        # Several open periods pass with the database still down: the breaker
        # turns half-open each time, and these requests come in meanwhile.
        answers: dict[str, set[int]] = {}
        until = time.monotonic() + 4 * OPEN_FOR
        while time.monotonic() < until:
            for path, _status in [*NO_DB[framework], ("/api/leads", 401)]:
                answers.setdefault(path, set()).add(anonymous.get(path).status_code)
            time.sleep(0.05)
        expected = {path: {status} for path, status in [*NO_DB[framework], ("/api/leads", 401)]}
        assert answers == expected
        # None of them reached the database, so none was taken for its recovery.
        assert _database_status(svc) == "warn"
    deadline = time.monotonic() + 10
    while svc.get("/api/leads")[0].status_code != 200:
        assert time.monotonic() < deadline, "did not recover"
        time.sleep(0.05)
    assert _database_status(svc) == "pass"
    assert "Traceback" not in svc.log(), svc.log()[-3000:]


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
def test_a_commit_that_never_reached_the_server_is_a_503_not_applied(
    framework: str,
    service_factory: Callable[..., Service],
    pg_proxy: Any,
    pg_server: Any,
    web_database: str,
) -> None:
    svc = service_factory(framework)
    lead = f"dropped-{framework}-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(f"{lead}-warm")[0].status_code == 201
    with pg_proxy.fault("cut_after", pattern=r"^\s*COMMIT\b", forward=False, count=1):
        response, _took = svc.post_lead(lead)
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "SERVICE_UNAVAILABLE"  # safe to retry...
    with psycopg.connect(pg_server.dsn(web_database), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM lead_writes WHERE lead_id = %s", (lead,)
        ).fetchone()
    assert row == (0,)  # ...because it was not applied
    assert svc.post_lead(f"{lead}-again")[0].status_code == 201
    assert "Traceback" not in svc.log(), svc.log()[-3000:]


@pytest.mark.parametrize("fault", ["freeze", "terminate"])
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_sessions_answer_within_the_budget_and_close_quietly(
    driver: str, fault: str, pg_proxy: Any, web_database: str, tmp_path: Path
) -> None:
    """``AsyncSession`` per request (``outlast.starlette.session``) on a plain async engine."""
    budget = 2.0
    port = free_port()
    env = {"DATABASE_URL": pg_proxy.url(web_database, driver=driver), "OUTLAST_BUDGET": str(budget)}
    log = tmp_path / f"async-{driver}-{fault}.log"
    proc = spawn("fastapi", port, env, log, app_dir=APPS, apps={"fastapi": "async_sessions:app"})
    svc = Server("fastapi", port, proc, log)
    try:
        wait_until_up(svc)
        lead = f"async-{driver}-{fault}-{uuid.uuid4().hex[:8]}"
        assert svc.client.post("/api/leads", json={"id": lead, "name": "x"}).status_code == 201
        if fault == "terminate":
            pg_proxy.add_fault("reject_login", preset="starting_up")
        pg_proxy.add_fault(fault)
        try:
            for i in range(3):
                start = time.monotonic()
                response = svc.client.post("/api/leads", json={"id": f"{lead}-{i}", "name": "x"})
                took = time.monotonic() - start
                assert response.status_code == 503, response.text
                assert took <= budget + 1.0, took
                assert svc.client.get("/api/ping").status_code == 200
        finally:
            pg_proxy.clear()
        deadline = time.monotonic() + 15
        while (
            svc.client.post("/api/leads", json={"id": f"{lead}-after", "name": "x"}).status_code
            != 201
        ):
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.1)
        assert "Traceback" not in svc.log(), svc.log()[-3000:]
    finally:
        svc.stop()
