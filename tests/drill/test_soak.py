"""The soak: its flatness rule, its readings, and that a real leak fails it.

The leak tests run a tiny service in its own process (``soak_service.py``)
that starts a thread, or opens a socket, every time its database goes away
and never lets go: the soak must fail and name that resource. The same
service without the leak must pass, or the rule would be noise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from outlast.drill import DrillConfig, Route, SoakConfig, builtin, run_soak, write_soak_report
from outlast.drill._flat import Windows, judge, judge_latency, windows_for
from outlast.drill._sample import (
    descendants,
    metrics_values,
    parse_exposition,
    proc_stats,
    status_fields,
)
from outlast.drill._soak import parse_length

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


# -- the rule ------------------------------------------------------------------------


def test_windows_are_the_first_minute_after_warm_up_and_the_last_minute():
    assert windows_for(600) == Windows(first=(60.0, 120.0), last=(540.0, 600.0))
    assert windows_for(90) == Windows(first=(15.0, 30.0), last=(75.0, 90.0))
    with pytest.raises(ValueError):
        windows_for(0)


def _steady(value: float, *, end: int = 600, growth: float = 0.0) -> list[tuple[float, float]]:
    return [(float(t), value + growth * t) for t in range(end)]


def test_a_flat_resource_passes_and_one_that_grows_fails_naming_it():
    w = windows_for(600)
    flat = judge("threads", _steady(12), w)
    assert flat.passed is True and flat.first == flat.last == 12
    leak = judge("threads", _steady(12, growth=0.05), w)  # a thread every 20 s
    assert leak.passed is False and leak.growth is not None and leak.growth > 20
    assert leak.detail.startswith("grew 16.475 -> 40.475 (+145.7%)")


def test_growth_within_five_percent_or_the_absolute_bound_is_flat():
    w = windows_for(600)
    # 200 MiB -> 209 MiB: 4.5 %, over the 4 MiB floor but within 5 %.
    assert judge("rss", _steady(200 * MiB, growth=9 * MiB / 480), w).passed is True
    # 200 MiB -> 212 MiB: 6 %: a leak.
    assert judge("rss", _steady(200 * MiB, growth=12 * MiB / 480), w).passed is False
    # A pool of 3 holding 4 late: +33 %, but one connection is within the bound of 2.
    assert judge("pool", [(t, 3.0 if t < 300 else 4.0) for t in range(600)], w).passed is True
    assert judge("pool", [(t, 3.0 if t < 300 else 6.0) for t in range(600)], w).passed is False


def test_shrinking_is_never_a_leak_and_missing_readings_are_not_measured():
    w = windows_for(600)
    assert judge("fds", _steady(80, growth=-0.05), w).passed is True
    none = judge("tasks", [(float(t), None) for t in range(600)], w)
    assert none.passed is None and none.detail == "not measured"
    # One unreadable second does not decide anything.
    gappy = [(float(t), None if t % 7 == 0 else 30.0) for t in range(600)]
    assert judge("fds", gappy, w).passed is True


def test_medians_ignore_the_breathing_of_faults():
    """A pool that drops to 0 during each fault and refills is not a leak (nor a fix)."""
    w = windows_for(600)
    breathing = [(float(t), 0.0 if t % 5 == 0 else 5.0) for t in range(600)]
    v = judge("pool", breathing, w)
    assert v.passed is True and v.first == v.last == 5.0


def test_latency_drift():
    w = windows_for(90)
    steady = [(t / 10, 0.003) for t in range(900)]
    assert judge_latency(steady, w).passed is True
    # 3 ms -> 9 ms: +6 ms is within the 10 ms floor on a loaded machine.
    assert judge_latency([(t, 0.003 if t < 45 else 0.009) for t, _ in steady], w).passed
    drift = [(t, 0.003 + 0.0005 * t) for t, _ in steady]  # 3 ms -> 45 ms
    v = judge_latency(drift, w)
    assert v.passed is False and "ms" in v.detail


def test_soak_lengths():
    assert parse_length("90s") == 90 and parse_length("10m") == 600
    assert parse_length("1.5h") == 5400 and parse_length("120") == 120
    for bad in ("10", "ten minutes", "-5m", "2d"):
        with pytest.raises(ValueError):
            parse_length(bad)


# -- the readings --------------------------------------------------------------------


def test_proc_status_and_the_process_tree():
    text = "Name:\tpython\nVmRSS:\t   51234 kB\nThreads:\t7\nVmSwap:\t0 kB\n"
    assert status_fields(text) == {"rss": 51234 * 1024, "threads": 7}
    parents = {1: 0, 10: 1, 11: 10, 12: 10, 13: 11, 20: 1}
    assert descendants(10, parents) == [10, 11, 12, 13]
    assert descendants(20, parents) == [20]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_proc_stats_of_a_real_process_and_its_children():
    alone = proc_stats(os.getpid())
    assert alone.rss > 10 * MiB and alone.fds > 2 and alone.threads >= 1
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        both = proc_stats(os.getpid())
        assert both.processes == alone.processes + 1
        assert both.rss > alone.rss and both.threads > alone.threads
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    with pytest.raises(ProcessLookupError):
        proc_stats(child.pid)


def test_outlast_prometheus_exposition_reads_as_the_soak_resources():
    prometheus_client = pytest.importorskip("prometheus_client")
    from outlast.prometheus import exposition

    registry = prometheus_client.CollectorRegistry()
    stop = threading.Event()
    parked = [threading.Thread(target=stop.wait, daemon=True) for _ in range(5)]
    try:
        before = threading.active_count()
        for t in parked:
            t.start()
        body, _ = exposition(registry)
        after = threading.active_count()
    finally:
        stop.set()
        for t in parked:
            t.join(5)
    values = metrics_values(parse_exposition(body.decode()))
    # Other tests' threads may come and go meanwhile; ours are counted.
    assert before + 5 - 2 <= values["threads"] <= after + 2
    assert "tasks" not in values  # read outside an event loop: no count, not a zero

    async def scrape() -> dict[str, float]:
        sleepers = [asyncio.create_task(asyncio.sleep(5)) for _ in range(3)]
        try:
            return metrics_values(parse_exposition(exposition(registry)[0].decode()))
        finally:
            for t in sleepers:
                t.cancel()
            await asyncio.gather(*sleepers, return_exceptions=True)

    assert asyncio.run(scrape())["tasks"] >= 4  # three sleepers and the scraper itself


def test_parse_exposition_sums_series_and_skips_comments_and_nan():
    text = (
        "# HELP db_client_connection_count Connections by state\n"
        "# TYPE db_client_connection_count gauge\n"
        'db_client_connection_count{db_client_connection_state="idle",pool="a"} 3.0\n'
        'db_client_connection_count{db_client_connection_state="used",pool="a"} 2.0\n'
        "process_resident_memory_bytes 1.2345e+08\n"
        "process_open_fds 41.0\n"
        "outlast_asyncio_tasks NaN\n"
    )
    assert metrics_values(parse_exposition(text)) == {
        "pool": 5.0,
        "rss": 1.2345e8,
        "fds": 41.0,
    }


# -- a leak is caught, and its absence passes ---------------------------------------------


class ControlInjector:
    """Takes the soak service's database away through its control port."""

    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
        self.active: set[str] = set()
        self.n = 0

    def add_fault(self, kind: str, duration: float | None = None, toxicity: float = 1.0,
                  **params: Any) -> str:  # fmt: skip
        self.n += 1
        fid = f"{kind}-{self.n}"
        self.active.add(fid)
        self.client.post("/down")
        return fid

    def remove_fault(self, fault_id: str) -> None:
        self.active.discard(fault_id)
        if not self.active:
            self.client.post("/up")

    def clear(self) -> None:
        self.active.clear()
        self.client.post("/up")


async def _soak_tiny_service(leak: str, length: float, tmp: Path) -> Any:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "soak_service.py"), "--leak", leak],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        port, control = (int(x) for x in line.split())
        injector = ControlInjector(control)
        scenarios = [builtin(n, duration=0.4, budget=1.0) for n in ("down", "reset", "terminate")]
        drill = DrillConfig(
            url=f"http://127.0.0.1:{port}", scenarios=scenarios, ping=Route("GET", "/api/ping"),
            budget=1.0, margin=0.5, warmup=0.3, settle=0.2, max_recovery=3.0, interval=0.05,
            label=f"leak={leak}",
        )  # fmt: skip
        result = await run_soak(
            SoakConfig(drill=drill, length=length, pid=proc.pid, metrics_path=None), injector
        )
        injector.client.close()
        return result
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize(("leak", "resource"), [("thread", "threads"), ("socket", "fds")])
async def test_a_service_that_leaks_per_outage_fails_the_soak_naming_what_leaked(
    leak, resource, tmp_path
):
    result = await _soak_tiny_service(leak, 18.0, tmp_path)
    verdicts = {r.name: r for r in result.resources}
    print(json.dumps({k: v.as_dict() for k, v in verdicts.items()}, indent=1))
    assert len(result.cycles) >= 8
    assert not result.passed
    assert verdicts[resource].passed is False, verdicts[resource]
    assert any(reason.startswith(f"{resource} grew") for reason in result.reasons())
    # The service was otherwise fine: the drill's own checks passed every fault.
    assert not result.failed_cycles
    report = tmp_path / "soak.html"
    write_soak_report(str(report), [result])
    html = report.read_text()
    assert f'data-resource="{resource}" data-passed="False"' in html


@pytest.mark.slow
async def test_the_same_service_without_the_leak_passes(tmp_path):
    result = await _soak_tiny_service("none", 18.0, tmp_path)
    assert result.passed, result.reasons()
    verdicts = {r.name: r for r in result.resources}
    assert verdicts["threads"].passed and verdicts["fds"].passed and verdicts["rss"].passed
    assert verdicts["rss"].first is not None and verdicts["rss"].first > 5 * MiB
    assert result.latency.passed is True


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--soak", "5x"], "90s, 10m or 1h"),
        (["--soak", "10s", "--proxy-admin", "http://127.0.0.1:9"], "from 30 seconds"),
        (["--soak", "10m"], "give --proxy-admin"),
        (["--soak", "10m", "--pid", "999999999"], "no such process"),
    ],
)
def test_soak_options_are_checked_before_anything_starts(extra, says, capsys):
    from outlast.cli import main

    secret = "postgresql://soak:pa%3Ass@127.0.0.1:9/db"
    assert main(["drill", "--url", "http://127.0.0.1:9", "--dsn", secret, *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and "pa%3Ass" not in err


def test_plot_axes_are_round_and_the_figure_is_well_formed_svg():
    import xml.etree.ElementTree as ET

    from outlast.drill._plot import Panel, figure, nice_max, tick_label

    assert nice_max(523) == 600 and nice_max(19.4) == 20 and nice_max(95) == 100
    assert nice_max(0) == 1 and nice_max(0.0031) == 0.004
    assert tick_label(1000) == "1,000" and tick_label(0.75) == "0.75" and tick_label(150) == "150"
    points = [(float(t), None if t == 30 else 100.0 + t / 10) for t in range(600)]
    svg = figure(
        [Panel("rss", "memory <RSS> & co", points, passed=True, note="flat"),
         Panel("tasks", "asyncio tasks", [(0.0, None)], passed=None)],
        end=600, shade=[(60, 120), (540, 600)], title="a & b",
    )  # fmt: skip
    root = ET.fromstring(svg)  # a README shows the file as is: it must parse
    ns = "{http://www.w3.org/2000/svg}"
    panels = root.findall(f".//{ns}g[@class='soak-panel']")
    assert [p.get("data-resource") for p in panels] == ["rss", "tasks"]
    # A second that could not be read splits the line; nothing is drawn without readings.
    assert len(panels[0].findall(f"{ns}polyline")) == 2
    assert panels[1].findall(f"{ns}polyline") == []
    labels = [t.text for t in root.iter(f"{ns}text")]
    assert "10 min" in labels and "1e+03" not in labels
