"""The drill against deliberately broken services: each flaw fails its check."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from drill_kit import FakeInjector, FakeService

from outlast.drill import DrillConfig, DrillResult, Route, builtin, run_drill


def _config(url: str, **kw: object) -> DrillConfig:
    base: dict[str, object] = {
        "url": url,
        "scenarios": [builtin("down", duration=1.5, budget=1.0)],
        "ping": Route("GET", "/api/ping"),
        "budget": 1.0,
        "margin": 0.5,
        "warmup": 0.6,
        "settle": 0.4,
        "max_recovery": 3.0,
        "interval": 0.05,
        "workers": {"read": 2, "write": 2},
        "label": "fake",
    }
    base.update(kw)
    return DrillConfig(**base)  # type: ignore[arg-type]


async def _drill(mode: str, **kw: object) -> tuple[DrillResult, FakeService]:
    with FakeService(mode, hang=2.5) as svc:
        result = await run_drill(_config(svc.url, **kw), FakeInjector(svc))
    return result, svc


def _failed(result: DrillResult) -> set[str]:
    return {c.name for s in result.scenarios for c in s.checks if c.passed is False}


async def test_drill_well_behaved_service_passes_every_check():
    result, svc = await _drill("good")
    assert result.error is None
    [s] = result.scenarios
    assert _failed(result) == set(), [c.as_dict() for c in s.checks]
    assert result.passed
    assert s.outcomes.get("503", 0) > 0  # the fault was really seen
    assert s.first_503 is not None and s.first_503 < 1.0
    assert s.recovery is not None and s.recovery < 3.0
    assert result.ledger is not None and result.ledger.acknowledged > 5
    assert result.ledger.failed > 0 and not result.ledger.lost
    names = {c.name for c in s.checks if c.passed}
    assert {
        "no_500",
        "retry_after",
        "budget",
        "ping",
        "live",
        "background",
        "recovery",
        "writes",
    } <= names
    json.dumps(result.as_dict())  # serialisable for --json


async def test_drill_service_answering_500_fails_no_500_check():
    result, _ = await _drill("500")
    assert "no_500" in _failed(result)
    assert not result.passed


async def test_drill_service_losing_acknowledged_writes_fails_writes_check():
    result, _ = await _drill("lose")
    assert _failed(result) == {"writes"}
    assert result.ledger is not None and result.ledger.lost
    [s] = result.scenarios
    writes = s.check("writes")
    assert s.ledger is not None and writes is not None
    assert writes.detail == f"{len(s.ledger.lost)} acknowledged writes lost" or (
        writes.detail == "1 acknowledged write lost" and len(s.ledger.lost) == 1
    )


async def test_drill_service_applying_writes_twice_fails_writes_check():
    result, _ = await _drill("double")
    assert "writes" in _failed(result)
    assert result.ledger is not None and result.ledger.duplicated


async def test_drill_service_hanging_past_budget_fails_budget_check():
    result, _ = await _drill("hang")
    assert "budget" in _failed(result)
    [s] = result.scenarios
    assert s.outcomes.get("timeout", 0) > 0


async def test_drill_503_without_retry_after_fails_retry_after_check():
    result, _ = await _drill("no_retry_after")
    failed = _failed(result)
    assert "retry_after" in failed
    assert "no_500" not in failed


async def test_drill_dead_background_loop_fails_background_check():
    result, _ = await _drill("dead_loop")
    assert "background" in _failed(result)


async def test_drill_reports_unreachable_service_as_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _config(f"http://127.0.0.1:{port}", start_timeout=1.0)
    result = await run_drill(cfg, None)
    assert result.error is not None and "not answering" in result.error
    assert not result.passed


def test_drill_refuses_non_loopback_targets():
    with pytest.raises(ValueError, match="loopback"):
        _config("http://example.com")  # config is fine...
        from outlast.drill import Traffic

        Traffic("http://example.com", routes={}, budget=1.0)  # ...traffic is not


def test_drill_cli_through_real_chaos_proxy_json_and_exit_codes(tmp_path):
    """`outlast drill` end to end: the admin API drives a real chaos proxy whose
    refusals the fake service sees as its database going down."""
    from outlast.chaos import AdminServer, Proxy
    from outlast.cli import main

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(64)
    stop = threading.Event()

    def accept() -> None:
        upstream.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = upstream.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    report = tmp_path / "report.html"
    try:
        with Proxy(listen=("127.0.0.1", 0), upstream=upstream.getsockname(), name="pg") as proxy:
            admin = AdminServer([proxy], listen=("127.0.0.1", 0)).start()
            try:
                for mode, expected in (("good", 0), ("500", 1)):
                    with FakeService(mode, probe=("127.0.0.1", proxy.port)) as svc:
                        argv = [
                            "drill", "--url", svc.url, "--proxy-admin", admin.url,
                            "--proxy-token", admin.token,
                            "--ping", "GET /api/ping", "--scenarios", "down",
                            "--budget", "2", "--duration", "1.5", "--warmup", "0.5",
                            "--max-recovery", "4", "--json", "--report", str(report),
                        ]  # fmt: skip
                        assert main(argv) == expected, mode
                assert proxy.faults() == []
            finally:
                admin.stop()
    finally:
        stop.set()
        t.join(timeout=5)
        upstream.close()
    html = report.read_text()
    assert "<svg" in html and "fault-window" in html


def test_drill_cli_rejects_unknown_scenario(capsys):
    from outlast.cli import main

    assert main(["drill", "--url", "http://127.0.0.1:9", "--scenarios", "nope"]) == 2
    assert "unknown scenario" in capsys.readouterr().err
