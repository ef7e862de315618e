"""outlast.loop without a database: outage bookkeeping, logging, period, errors."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest

import outlast
from outlast.supervise import AsyncLoop, AsyncSupervisor, Loop, Supervisor

WAIT = 20.0


class Down(Exception):
    """Stands in for a driver's 'connection refused'."""


def _classifier(exc: BaseException) -> outlast.Fault | None:
    if isinstance(exc, Down):
        return outlast.Fault(
            kind=outlast.FaultKind.UNAVAILABLE,
            reason="connection_refused",
            sqlstate=None,
            phase="connect",
            transient=True,
            message="connection refused",
        )
    return None


def _guard() -> outlast.Guard:
    return outlast.Guard(
        "loopdb",
        retry=outlast.Retry(backoff=outlast.Backoff(initial=0.01, cap=0.02)),
        breaker=outlast.Breaker(open_for=0.01, max_open_for=0.02),
        classifier=_classifier,
    )


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outlast")


def _tagged(caplog: pytest.LogCaptureFixture, tag: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "outlast" and r.getMessage().startswith(tag)
    ]


class Script:
    """Each tick pops the next outcome: None (works), or an exception to raise."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = list(outcomes)
        self.ticks: list[float] = []
        self.done = threading.Event()

    def __call__(self) -> None:
        self.ticks.append(time.monotonic())
        if not self.outcomes:
            self.done.set()
            return
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def _run(loop: Loop[None], stop: threading.Event, script: Script) -> None:
    thread = threading.Thread(target=loop.run_forever, args=(stop,))
    thread.start()
    try:
        assert script.done.wait(WAIT)
    finally:
        stop.set()
        thread.join(WAIT)
    assert not thread.is_alive()


def test_two_outages_log_one_down_and_one_recovered_each(
    caplog: pytest.LogCaptureFixture, stop: threading.Event
) -> None:
    script = Script([None, Down(), Down(), Down(), Down(), Down(), Down(), None, Down(), None])
    guard = _guard()
    sync_leads = outlast.loop(every=0.01, guard=guard)(script)
    assert isinstance(sync_leads, Loop)
    _run(sync_leads, stop, script)
    downs = _tagged(caplog, "[DB_DOWN]")
    recovered = _tagged(caplog, "[DB_RECOVERED]")
    assert len(downs) == 2, downs
    assert len(recovered) == 2, recovered
    assert downs[0].startswith("[DB_DOWN] op=Script try=1 sleep=")
    assert downs[0].endswith("reason=connection_refused")
    assert all("op=Script" in line and "downtime=" in line for line in recovered)
    assert guard.state.outages == 2


def test_other_errors_are_logged_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture, stop: threading.Event
) -> None:
    script = Script([ValueError("bug"), None, KeyError("k"), None])
    looped = outlast.loop(every=0.01, name="worker")(script)
    _run(looped, stop, script)
    errors = _tagged(caplog, "[LOOP_ERROR]")
    assert len(errors) == 2
    assert errors[0].startswith("[LOOP_ERROR] op=worker reason=None err=ValueError: bug")
    assert "Traceback" in errors[0]
    assert not _tagged(caplog, "[DB_DOWN]")


def test_a_real_driver_error_is_classified_without_a_guard(
    caplog: pytest.LogCaptureFixture, stop: threading.Event
) -> None:
    psycopg = pytest.importorskip("psycopg")

    def connect_nowhere() -> None:
        # A closed loopback port: a real "connection refused" from libpq.
        raise psycopg.OperationalError(
            'connection failed: connection to server at "127.0.0.1", port 1 failed: '
            "Connection refused"
        )

    script = Script([None, None, None])
    outcomes: list[bool] = [True, True, False, False]

    def tick() -> None:
        if outcomes and outcomes.pop(0):
            connect_nowhere()
        script()

    looped = outlast.loop(
        every=0.01, name="nowhere", backoff=outlast.Backoff(initial=0.01, cap=0.01)
    )(tick)
    _run(looped, stop, script)
    assert len(_tagged(caplog, "[DB_DOWN]")) == 1
    assert len(_tagged(caplog, "[DB_RECOVERED]")) == 1
    assert "after 3 attempts" in _tagged(caplog, "[DB_RECOVERED]")[0]


def test_the_loop_keeps_its_period(stop: threading.Event) -> None:
    script = Script([None] * 5)
    looped = outlast.loop(every=0.1)(script)
    _run(looped, stop, script)
    gaps = [b - a for a, b in zip(script.ticks, script.ticks[1:], strict=False)]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_calling_the_loop_runs_one_plain_tick() -> None:
    @outlast.loop(every=5)
    def answer() -> int:
        """Docs survive."""
        return 42

    assert answer() == 42
    assert answer.name == "answer" and answer.__doc__ == "Docs survive."
    with pytest.raises(outlast.ConfigurationError):
        outlast.loop(every=-1)


def test_a_supervised_loop_stops_with_its_supervisor(caplog: pytest.LogCaptureFixture) -> None:
    ticks = threading.Semaphore(0)

    @outlast.loop(every=0.3, heartbeat=0.1)  # waiting between ticks is not a stall
    def heartbeat_loop() -> None:
        ticks.release()

    sup = Supervisor()
    heartbeat_loop.start(sup)
    for _ in range(3):
        assert ticks.acquire(timeout=WAIT)
        assert sup.status()["heartbeat_loop"].state == "running"
    assert sup.status()["heartbeat_loop"].heartbeat == 0.1
    assert not _tagged(caplog, "[TASK_STALLED]")
    assert sup.stop(timeout=WAIT) == []
    assert sup.status()["heartbeat_loop"].state == "stopped"


async def test_an_async_loop_rides_out_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    outcomes: list[BaseException | None] = [None, Down(), Down(), None]
    done = asyncio.Event()

    @outlast.loop(every=0.01, guard=_guard(), name="alerts")
    async def alerts() -> None:
        if not outcomes:
            done.set()
            return
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    assert isinstance(alerts, AsyncLoop)
    async with AsyncSupervisor() as sup:
        alerts.start(sup)
        await asyncio.wait_for(done.wait(), WAIT)
        assert sup.status()["alerts"].state == "running"
    assert sup.status()["alerts"].state == "stopped"
    assert len(_tagged(caplog, "[DB_DOWN]")) == 1
    assert len(_tagged(caplog, "[DB_RECOVERED]")) == 1
    assert "op=alerts after 3 attempts" in _tagged(caplog, "[DB_RECOVERED]")[0]
