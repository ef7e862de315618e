"""The report's metrics view: the service's own ``/metrics`` around each scenario.

Pure logic on exposition text first, then a real drill of the reference
service (uvicorn, the chaos proxy, a real PostgreSQL) that serves
``outlast.prometheus`` metrics, and of the same service without outlast
(no ``/metrics``: no view).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.drill._metrics import MetricsDelta, Scrape, delta, parse_exposition

BEFORE = """\
# HELP outlast_database_outages_total Outages seen
# TYPE outlast_database_outages_total counter
outlast_database_outages_total{guard="main"} 1.0
# HELP outlast_database_downtime_seconds_total Seconds down in total
# TYPE outlast_database_downtime_seconds_total counter
outlast_database_downtime_seconds_total{guard="main"} 2.0
# HELP outlast_database_down_for_seconds how long
# TYPE outlast_database_down_for_seconds gauge
outlast_database_down_for_seconds{guard="main"} 0.0
# HELP outlast_breaker_transitions_total Breaker transitions
# TYPE outlast_breaker_transitions_total counter
outlast_breaker_transitions_total{guard="main",to="open"} 2.0
outlast_breaker_transitions_total{guard="main",to="closed"} 2.0
# HELP outlast_retry_calls_total Calls that failed at least once
# TYPE outlast_retry_calls_total counter
outlast_retry_calls_total{guard="main",kind="successful_with_retry"} 3.0
# HELP outlast_web_fault_responses_total Answers
# TYPE outlast_web_fault_responses_total counter
"""
BEFORE += (
    'outlast_web_fault_responses_total{error="SERVICE_UNAVAILABLE",guard="main",'
    'reason="breaker_open",status="503"} 10.0\n'
)
BEFORE += """\
# HELP db_client_connection_count Connections
# TYPE db_client_connection_count gauge
db_client_connection_count{db_client_connection_state="used",guard="main"} 1.0
db_client_connection_count{db_client_connection_state="idle",guard="main"} 4.0
"""


def test_deltas_from_the_exposition_format():
    during = BEFORE.replace(
        'down_for_seconds{guard="main"} 0.0', 'down_for_seconds{guard="main"} 4.5'
    )
    during = during.replace('state="used",guard="main"} 1.0', 'state="used",guard="main"} 7.0')
    after = (
        BEFORE.replace('outages_total{guard="main"} 1.0', 'outages_total{guard="main"} 2.0')
        .replace('seconds_total{guard="main"} 2.0', 'seconds_total{guard="main"} 8.5')
        .replace('to="open"} 2.0', 'to="open"} 5.0')
        .replace('to="closed"} 2.0', 'to="closed"} 3.0')
        .replace('successful_with_retry"} 3.0', 'successful_with_retry"} 9.0')
        .replace('status="503"} 10.0', 'status="503"} 130.0')
        + 'outlast_web_fault_responses_total{error="OUTCOME_UNKNOWN",guard="main",'
        'reason="commit_unknown",status="503"} 2.0\n'
    )
    scrapes = [
        Scrape(0.5, parse_exposition(BEFORE)),
        Scrape(5.0, parse_exposition(during)),
        Scrape(12.0, parse_exposition(after)),
        Scrape(30.0, parse_exposition(after.replace("130.0", "200.0"))),  # the next scenario
    ]
    d = delta(scrapes, 1.0, 11.5)
    assert d is not None
    assert (d.outages, d.longest_down, d.pool_used_peak) == (1, 4.5, 7)
    assert d.transitions == {"open": 3, "closed": 1}
    assert d.retry_calls == {"successful_with_retry": 6}
    assert d.answers == {"breaker_open": 120, "OUTCOME_UNKNOWN (commit_unknown)": 2}
    cells = d.cells()
    assert cells["outages"] == "1 (6.5 s down)"
    assert cells["breaker"] == "3 opened, 1 closed again"
    assert cells["retries"] == "0 retries; calls: 6 succeeded after retrying"
    assert cells["answers"] == "122: 120 breaker_open, 2 OUTCOME_UNKNOWN (commit_unknown)"
    assert cells["faults"] == "0"
    assert cells["commits"] == "none lost" and cells["pool"] == "7"
    assert delta(scrapes, 40.0, 50.0) is None  # nothing scraped after the span


def test_not_the_exposition_format_is_refused():
    with pytest.raises(ValueError):
        parse_exposition("<html><body>not metrics</body></html>\n{")
    assert MetricsDelta(scrapes=2).cells()["breaker"] == "stayed closed"


def _start(mode: str, url: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    from outlast.demo._process import start_service

    log = tmp / f"{mode}.log"
    proc, base = start_service(log, url, mode=mode, budget=2.5)
    end = time.monotonic() + 60
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(base + "/health/live", timeout=2, trust_env=False).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"the {mode} service did not start:\n{log.read_text()[-3000:]}")


def _drill(base: str, admin: Any, report: Path, *extra: str) -> None:
    from outlast.cli import main

    code = main(
        [
            "drill",
            "--url",
            base,
            "--proxy-admin",
            admin.url,
            "--proxy-token",
            admin.token,
            "--ping",
            "GET /api/ping",
            "--scenarios",
            "down,terminate",
            "--budget",
            "3",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--max-recovery",
            "5",
            "--json",
            "--report",
            str(report),
            *extra,
        ]  # fmt: skip
    )
    assert code in (0, 1)


@pytest.mark.slow
def test_a_real_drill_shows_what_the_services_metrics_counted(
    pg_proxy: Any, pg_database: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from outlast.chaos import AdminServer

    url = pg_proxy.url(pg_database.name, driver="psycopg")
    results: dict[str, Any] = {}
    with AdminServer([pg_proxy], listen=("127.0.0.1", 0)) as admin:
        for mode, extra in (
            ("outlast", ()),
            ("plain", ()),
            ("outlast-off", ("--metrics-path", "none")),
        ):
            proc, base, log = _start(mode.split("-")[0], url, tmp_path)
            try:
                capsys.readouterr()
                _drill(base, admin, tmp_path / f"{mode}.html", *extra)
                results[mode] = json.loads(capsys.readouterr().out)
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            if mode == "outlast":
                assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

    good = results["outlast"]
    assert good["passed"], json.dumps(good, indent=1)[:3000]
    [down] = [s for s in good["scenarios"] if s["name"] == "down"]
    m = down["metrics"]
    assert m is not None and m["scrapes"] >= 3
    assert m["outages"] >= 1 and m["downtime_seconds"] > 0
    assert m["breaker_transitions"].get("open", 0) >= 1
    assert m["rejected_calls"] > 0  # the open breaker answered for the database
    assert m["retries"] + sum(m["retry_calls"].values()) > 0  # calls that failed, by outcome
    assert sum(m["fault_responses"].values()) > 0  # the 503s, by reason
    assert sum(m["faults"].values()) > 0
    html = (tmp_path / "outlast.html").read_text()
    assert html.count('<table class="metrics"') == 1
    section = html.split('<table class="metrics"', 1)[1].split("</table>", 1)[0]
    assert "<b>down</b>" in section and "<b>terminate</b>" in section
    assert "s down)" in section

    # No /metrics (the service without outlast), or switched off: no view.
    for mode in ("plain", "outlast-off"):
        assert all(s["metrics"] is None for s in results[mode]["scenarios"]), mode
        assert '<table class="metrics"' not in (tmp_path / f"{mode}.html").read_text()
