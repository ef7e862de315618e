"""The CI-sized soak: ``outlast drill --soak 90s`` against the FastAPI example.

The example runs under uvicorn in its own process, behind the chaos proxy;
the soak cycles through every built-in scenario but ``restart`` (a fault
every few seconds, flapping included) and reads the service's memory, fds
and threads from /proc (``--pid``), its pool connections and asyncio tasks
from ``/metrics`` and its server connections from ``pg_stat_activity``
(``--dsn``). It must pass, and its samples must be real readings. The
README's 10-minute figures for FastAPI, Flask and Django come from
``benchmarks/soak.py`` (the same command, 10 minutes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from outlast.chaos import AdminServer

SOAK = "90s"
MiB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_the_fastapi_example_passes_a_90_second_soak_with_real_readings(
    service_factory: Any,
    pg_server: Any,
    pg_proxy: Any,
    web_database: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from outlast.cli import main

    service = service_factory("fastapi", budget=4.5)
    samples_file = tmp_path / "soak.json"
    report = tmp_path / "soak.html"
    with AdminServer([pg_proxy], listen=("127.0.0.1", 0)) as admin:
        code = main(
            [
                "drill",
                "--url",
                f"http://127.0.0.1:{service.port}",
                "--proxy-admin",
                admin.url,
                "--proxy-token",
                admin.token,
                "--header",
                "Authorization: Bearer test-token",
                "--ping",
                "GET /api/ping",
                "--soak",
                SOAK,
                "--pid",
                str(service.proc.pid),
                "--dsn",
                pg_server.url(web_database, driver=None),
                "--soak-json",
                str(samples_file),
                "--report",
                str(report),
                "--json",
            ]  # fmt: skip
        )
    summary = json.loads(capsys.readouterr().out)
    full = json.loads(samples_file.read_text())
    for r in [*summary["resources"], summary["latency"]]:
        print(f"  {r['name']:8} {r['detail']}")
    print(f"  {summary['faults']} faults, writes {summary['drill']['writes']}")
    assert code == 0 and summary["passed"], summary["reasons"]

    assert set(summary["sources"]) == {"proc", "metrics", "pg_stat_activity"}
    samples = full["samples"]
    assert len(samples) >= 80  # one a second

    def seen(name: str) -> list[float]:
        return [s[name] for s in samples if s[name] is not None]

    assert min(seen("rss")) > 20 * MiB
    assert min(seen("fds")) > 5 and min(seen("threads")) >= 1
    assert len(seen("tasks")) > 60 and max(seen("tasks")) >= 1
    assert max(seen("pool")) >= 1 and max(seen("server")) >= 1
    # The faults really took the server connections away, and they came back.
    assert min(seen("server")) < max(seen("server"))
    names = {s["name"] for s in full["drill"]["scenarios"]}
    assert {"down", "blackhole", "freeze", "flapping", "neon_endpoint_disabled"} <= names
    assert summary["faults"] >= 12 and summary["faults_failed"] == 0
    writes = summary["drill"]["writes"]
    assert writes["acknowledged"] > 0 and writes["lost"] == 0 and writes["duplicated"] == 0
    html = report.read_text()
    assert html.count('class="soak-panel"') == 7 and "postgresql://" not in html
    assert "Traceback" not in service.log()
