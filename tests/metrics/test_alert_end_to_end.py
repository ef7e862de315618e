"""End to end: a real Prometheus scrapes a real service and fires "database down", then resolves.

Prometheus (Debian's, installed by scripts/ensure-prometheus) runs on loopback
with the shipped rules, scraping the Flask metrics service every second. The
database goes away behind the chaos proxy; the alert must fire within 60 s
(it has ``for: 30s``) and resolve once the database is back.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from metrics_kit import service

import outlast.prometheus
from outlast.testing import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (scripts/ensure-prometheus installs it)",
    ),
]


@contextlib.contextmanager
def prometheus(target_port: int, tmp: Path) -> Iterator[httpx.Client]:
    assert PROMETHEUS is not None
    rules = tmp / "outlast-rules.yml"
    rules.write_text(outlast.prometheus.rules())
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{rules}]\n"
        "scrape_configs:\n  - job_name: svc\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/-/ready").status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "prometheus.log").read_text())
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(20)
        log.close()


def _alert_state(client: httpx.Client, name: str) -> str | None:
    alerts = client.get("/api/v1/alerts").json()["data"]["alerts"]
    states = [a["state"] for a in alerts if a["labels"].get("alertname") == name]
    return "firing" if "firing" in states else (states[0] if states else None)


def _wait(client: httpx.Client, name: str, want: str | None, timeout: float) -> float:
    started = time.monotonic()
    while _alert_state(client, name) != want:
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{name} still {_alert_state(client, name)!r}, wanted {want!r}")
        time.sleep(0.5)
    return time.monotonic() - started


def test_database_down_fires_within_a_minute_and_resolves(
    pg_proxy: Any, pg_database: Any, tmp_path: Path
) -> None:
    url = pg_proxy.url(pg_database.name, driver="psycopg")
    with service("flask", url, tmp_path / "service.log") as svc:
        port = int(str(svc.base_url).rsplit(":", 1)[1])
        with prometheus(port, tmp_path) as prom:
            # Scraped and healthy first: the alert is not even pending.
            _wait(prom, "OutlastDatabaseDown", None, 30)
            time.sleep(3)
            pg_proxy.add_fault("down")
            try:
                fired_after = _wait(prom, "OutlastDatabaseDown", "firing", 75)
            finally:
                pg_proxy.clear()
            resolved_after = _wait(prom, "OutlastDatabaseDown", None, 60)
    print(f"OutlastDatabaseDown fired {fired_after:.1f} s after the database went away;")
    print(f"resolved {resolved_after:.1f} s after it came back")
    assert 30 <= fired_after <= 60  # `for: 30s`, plus scrape and evaluation
