"""Real example services on loopback, in subprocesses, behind the chaos proxy."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.testing._postgres import free_port
from outlast.testing.plugin import TEMPLATE

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
START_TIMEOUT = 60.0
#: The Bearer token of the FastAPI and Flask examples' data routes.
API_TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
BUDGET = 5.0
_dbs = itertools.count(1)


EXAMPLE_APPS = {
    "fastapi": "fastapi_app:app",
    "flask": "flask_app:app",
    "django": "django_app.wsgi:application",
}


def server_command(
    framework: str, port: int, *, app_dir: Path = EXAMPLES, apps: dict[str, str] = EXAMPLE_APPS
) -> list[str]:
    """uvicorn for FastAPI, gunicorn (gthread) for Flask and Django, on loopback."""
    py = sys.executable
    if framework == "fastapi":
        return [
            py, "-m", "uvicorn", apps["fastapi"], "--app-dir", str(app_dir),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    return [
        py, "-m", "gunicorn", "-k", "gthread", "--threads", "16", "-w", "1",
        "-b", f"127.0.0.1:{port}", "--chdir", str(app_dir), "--timeout", "120",
        "--graceful-timeout", "2", "--log-level", "warning", apps[framework],
    ]  # fmt: skip


@dataclass
class Server:
    """A web service running in a subprocess, and a client for it."""

    framework: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    client: httpx.Client = field(init=False)

    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", timeout=30.0, headers=self.headers
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def spawn(
    framework: str, port: int, env: dict[str, str], log_path: Path, *, app_dir: Path,
    apps: dict[str, str] = EXAMPLE_APPS,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the framework's server on `port` with `app_dir` on the path, logging to a file."""
    full = dict(os.environ)
    full.update(env)
    full["PYTHONPATH"] = str(app_dir) + os.pathsep + os.environ.get("PYTHONPATH", "")
    full["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        return subprocess.Popen(
            server_command(framework, port, app_dir=app_dir, apps=apps),
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(app_dir),
        )


def wait_until_up(server: Server, path: str = "/api/ping") -> None:
    """Poll `path` until it answers 200; stop the server and raise if it never does."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.framework} exited at start-up:\n{server.log()}")
        try:
            if server.client.get(path, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"{server.framework} did not start in {START_TIMEOUT}s:\n{server.log()}"
            )
        time.sleep(0.1)


@dataclass
class Service(Server):
    """One example service running in a subprocess."""

    enabled: bool = True

    def get(self, path: str) -> tuple[httpx.Response, float]:
        start = time.monotonic()
        response = self.client.get(path)
        return response, time.monotonic() - start

    def post_lead(self, lead_id: str) -> tuple[httpx.Response, float]:
        start = time.monotonic()
        response = self.client.post("/api/leads", json={"id": lead_id, "name": f"lead {lead_id}"})
        return response, time.monotonic() - start


def start_service(
    framework: str, database_url: str, *, enabled: bool, tmp: Path, budget: float = BUDGET
) -> Service:
    port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "OUTLAST_ENABLED": "1" if enabled else "0",
        "OUTLAST_BUDGET": str(budget),
        "API_TOKEN": API_TOKEN,
    }
    log_path = tmp / f"{framework}-{'on' if enabled else 'off'}-{port}.log"
    proc = spawn(framework, port, env, log_path, app_dir=EXAMPLES)
    service = Service(framework, port, proc, log_path, headers=dict(AUTH), enabled=enabled)
    wait_until_up(service)
    return service


def begin_outage(kind: str, proxy: Any, pg: Any) -> None:
    if kind in ("down", "blackhole"):
        proxy.add_fault(kind)
    elif kind == "neon_endpoint_disabled":
        # Neon suspends the compute: sessions end, new logins get XX000.
        proxy.add_fault("reject_login", preset="neon_endpoint_disabled")
        proxy.close_connections()
    elif kind == "terminate":
        # An administrator shutdown: live sessions get 57P01, new logins too.
        proxy.add_fault(
            "reject_login",
            severity="FATAL",
            sqlstate="57P01",
            message="terminating connection due to administrator command",
        )
        proxy.add_fault("terminate")
    elif kind == "restart":
        pg.stop()
    else:  # pragma: no cover
        raise AssertionError(kind)


def end_outage(kind: str, proxy: Any, pg: Any) -> None:
    if kind == "restart":
        pg.start()
    else:
        proxy.clear()


@pytest.fixture(scope="session")
def web_database(pg_server):  # type: ignore[no-untyped-def]
    """One database for the web tests (the leads table is created by the apps)."""
    name = f"web_{os.getpid()}_{next(_dbs)}"
    pg_server.create_database(name, template=TEMPLATE)
    yield name


@pytest.fixture
def service_factory(pg_proxy, web_database, tmp_path) -> Iterator[object]:  # type: ignore[no-untyped-def]
    started: list[Service] = []

    def start(framework: str, *, enabled: bool = True, budget: float = BUDGET) -> Service:
        url = pg_proxy.url(web_database, driver="psycopg")
        service = start_service(framework, url, enabled=enabled, tmp=tmp_path, budget=budget)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
