"""Start the metrics test services on loopback and read their /metrics."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from outlast.testing import free_port

APPS = Path(__file__).parent / "metrics_apps"


def command(framework: str, port: int) -> list[str]:
    py = sys.executable
    if framework == "fastapi":
        return [
            py, "-m", "uvicorn", "metrics_fastapi:app", "--app-dir", str(APPS),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    return [
        py, "-m", "gunicorn", "-k", "gthread", "--threads", "8", "-w", "1",
        "-b", f"127.0.0.1:{port}", "--chdir", str(APPS), "--timeout", "60",
        "--graceful-timeout", "2", "--log-level", "warning", "metrics_flask:app",
    ]  # fmt: skip


@contextlib.contextmanager
def service(framework: str, database_url: str, log_path: Path) -> Iterator[httpx.Client]:
    """Run the service until the block ends (stopped even when the block fails)."""
    port = free_port()
    env = dict(os.environ, DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(APPS) + os.pathsep + os.environ.get("PYTHONPATH", "")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command(framework, port), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=APPS
        )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{framework} exited:\n{log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/api/ping", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{framework} did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> tuple[Samples, str]:
    """Every sample of ``/metrics`` keyed by (name, labels), and the raw text."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, text


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)


def wait_for(client: httpx.Client, check: object, timeout: float = 30.0) -> Samples:
    """Scrape until ``check(samples)`` is true; the last samples, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(client)
        if check(samples):  # type: ignore[operator]
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never matched: {sorted(samples)[:40]}")
        time.sleep(0.2)
