"""The Django REST framework example (``examples/django_app``) on real servers.

gunicorn with *sync* workers (one request per process at a time, what most
Django deployments run) or uvicorn (ASGI; Django runs each request's sync
code in a thread of its own), on loopback, pointed at the chaos proxy. The
database is migrated first (``python -m django migrate``, as a deploy does)
and a user with an API token is made with the example's ``drilluser``
command.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from conftest import Server, wait_until_up

from outlast.testing._postgres import free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SERVERS = ("gunicorn-sync", "uvicorn")


def server_command(kind: str, port: int, *, workers: int = 2) -> list[str]:
    py = sys.executable
    if kind == "uvicorn":
        return [
            py, "-m", "uvicorn", "django_app.asgi:application", "--app-dir", str(EXAMPLES),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    if kind == "gunicorn-sync":
        return [
            py, "-m", "gunicorn", "-k", "sync", "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--chdir", str(EXAMPLES), "--timeout", "120", "--graceful-timeout", "2",
            "--log-level", "warning", "django_app.wsgi:application",
        ]  # fmt: skip
    raise AssertionError(kind)


def _env(database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DJANGO_SETTINGS_MODULE="django_app.settings",
        PYTHONPATH=str(EXAMPLES) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(database_url: str, *args: str, **env: str) -> str:
    """``python -m django <args>`` for the example (straight to the database)."""
    done = subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=EXAMPLES,
        env=_env(database_url, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"django {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def prepare(database_url: str, *, password: str | None = None) -> str:
    """Migrate the database and return the API token of user ``drill``."""
    manage(database_url, "migrate", "-v", "0")
    extra = {"DRILL_PASSWORD": password} if password else {}
    return manage(database_url, "drilluser", "drill", **extra).splitlines()[-1]


@dataclass
class DrfService(Server):
    """The example running in a subprocess, with an authenticated client."""

    token: str = ""
    kind: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.client.headers["Authorization"] = f"Token {self.token}"

    def create(self, name: str, email: str) -> httpx.Response:
        return self.client.post("/api/leads/", json={"name": name, "email": email})


def start(
    kind: str,
    proxy_url: str,
    token: str,
    tmp: Path,
    *,
    enabled: bool = True,
    atomic: bool = True,
    budget: float = 5.0,
    workers: int = 2,
    **env: str,
) -> DrfService:
    port = free_port()
    log_path = tmp / f"drf-{kind}-{'on' if enabled else 'off'}-{port}.log"
    full = _env(
        proxy_url,
        OUTLAST_ENABLED="1" if enabled else "0",
        OUTLAST_BUDGET=str(budget),
        DJANGO_ATOMIC_REQUESTS="1" if atomic else "0",
        **env,
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            server_command(kind, port, workers=workers),
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(EXAMPLES),
        )
    service = DrfService("django", port, proc, log_path, token=token, kind=kind)
    wait_until_up(service, "/api/ping/")
    return service


def stored(dsn: str, email: str) -> int:
    """How many rows hold `email` (straight to the database)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM drf_leads WHERE email = %s", (email,)).fetchone()
    assert row is not None
    return int(row[0])


def warm(service: DrfService, rounds: int = 6) -> None:
    """A few reads so every worker holds a persistent connection."""
    for _ in range(rounds):
        assert service.client.get("/api/leads/").status_code == 200


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
