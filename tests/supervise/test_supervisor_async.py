"""AsyncSupervisor: the asyncio twin keeps the thread supervisor's contract."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable

import pytest

import outlast
from outlast.supervise import AsyncSupervisor, AsyncTaskContext, TaskStatus, current

WAIT = 20.0


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outlast")


async def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def _tagged(caplog: pytest.LogCaptureFixture, tag: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "outlast" and r.getMessage().startswith(tag)]


async def test_crashes_restart_with_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    backoff = outlast.Backoff(initial=0.02, multiplier=2.0, cap=0.16, jitter=0.0)
    starts: list[float] = []
    done = asyncio.Event()

    async def work(ctx: AsyncTaskContext) -> None:
        starts.append(time.monotonic())
        if len(starts) == 7:
            done.set()
            await ctx.stop_event.wait()
            return
        if len(starts) % 3 == 0:
            raise ValueError("every third run fails")

    async with AsyncSupervisor(backoff=backoff, max_restarts=None) as sup:
        sup.start("flaky", work)
        await asyncio.wait_for(done.wait(), WAIT)
        assert sup.status()["flaky"].restarts == 6
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    expected = [backoff.base(n) for n in range(1, 7)]
    assert all(gap >= want * 0.9 for gap, want in zip(gaps, expected, strict=True)), gaps
    assert len(_tagged(caplog, "[THREAD_CRASH]")) == 2
    assert "kind=task" in _tagged(caplog, "[THREAD_CRASH]")[0].getMessage()


async def test_always_raising_task_fails_and_escalates() -> None:
    failed: list[TaskStatus] = []

    async def broken(ctx: AsyncTaskContext) -> None:
        raise RuntimeError("password=hunter2")

    async def patient(ctx: AsyncTaskContext) -> None:
        while await ctx.sleep(30):
            pass

    sup = AsyncSupervisor(backoff=0, max_restarts=2, on_failure="escalate")
    sup.start("patient", patient)
    sup.start("broken", broken)
    await asyncio.wait_for(sup.wait(), WAIT)
    assert await sup.stop(timeout=WAIT) == []
    status = sup.status()
    assert status["broken"].state == "failed" and status["broken"].restarts == 2
    assert status["broken"].last_error is not None
    assert "hunter2" not in status["broken"].last_error
    assert status["patient"].state == "stopped"
    health = sup.health()
    assert health["status"] == "fail"
    json.dumps(health)

    callback = AsyncSupervisor(backoff=0, max_restarts=0, on_failure=failed.append)
    callback.start("broken", broken)
    assert await _until(lambda: len(failed) == 1)
    assert failed[0].name == "broken"
    assert await callback.stop(timeout=WAIT) == []


async def test_a_hanging_task_is_stalled(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def hangs(ctx: AsyncTaskContext) -> None:
        await release.wait()
        while await ctx.sleep(0.02):
            ctx.beat()

    async with AsyncSupervisor(backoff=0) as sup:
        sup.start("hangs", hangs, heartbeat=0.5)
        assert await _until(lambda: sup.status()["hangs"].state == "stalled")
        assert sup.health()["status"] == "warn"
        assert await _until(lambda: len(_tagged(caplog, "[TASK_STALLED]")) == 1)
        release.set()
        assert await _until(lambda: sup.status()["hangs"].state == "running")
        assert sup.health()["status"] == "pass"


async def test_current_inside_a_task() -> None:
    seen: list[object] = []

    async def work(ctx: AsyncTaskContext) -> None:
        seen.extend([current(), ctx, asyncio.current_task()])

    async with AsyncSupervisor() as sup:
        sup.start("ctx", work, restart="never")
        assert await _until(lambda: sup.status()["ctx"].state == "finished")
    assert seen[0] is seen[1]
    assert isinstance(seen[2], asyncio.Task) and seen[2].get_name() == "ctx"
    assert current() is None


async def test_a_thousand_restarts_leave_no_task_behind() -> None:
    before = asyncio.all_tasks()
    runs = 0
    done = asyncio.Event()

    async def churn(ctx: AsyncTaskContext) -> None:
        nonlocal runs
        runs += 1
        if runs > 1000:
            done.set()
            await ctx.stop_event.wait()
        elif runs % 2:
            raise ValueError("crash")

    logging.getLogger("outlast").disabled = True
    try:
        sup = AsyncSupervisor(backoff=0, max_restarts=None)
        sup.start("churn", churn)
        await asyncio.wait_for(done.wait(), WAIT * 3)
        assert len(asyncio.all_tasks() - before) == 1  # only the one supervised Task
        assert sup.status()["churn"].restarts == 1000
        assert await sup.stop(timeout=WAIT) == []
    finally:
        logging.getLogger("outlast").disabled = False
    assert asyncio.all_tasks() == before


async def test_fifty_tasks_stop_within_the_timeout() -> None:
    before = asyncio.all_tasks()
    running = 0

    async def worker(ctx: AsyncTaskContext) -> None:
        nonlocal running
        running += 1
        while await ctx.sleep(30):
            pass

    sup = AsyncSupervisor(backoff=0, stop_timeout=10)
    for i in range(50):
        sup.start(f"worker-{i}", worker, heartbeat=60)
    assert await _until(lambda: running == 50)
    started = time.monotonic()
    assert await sup.stop() == []
    assert time.monotonic() - started < 10
    assert asyncio.all_tasks() == before
    assert {s.state for s in sup.status().values()} == {"stopped"}


async def test_a_task_that_ignores_stop_is_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = asyncio.Event()

    async def stubborn(ctx: AsyncTaskContext) -> None:
        try:
            await asyncio.sleep(WAIT * 10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sup = AsyncSupervisor()
    sup.start("stubborn", stubborn)
    await asyncio.sleep(0)
    assert await sup.stop(timeout=0.2) == ["stubborn"]
    assert cancelled.is_set()
    assert sup.status()["stubborn"].state == "stopped"
    assert len(_tagged(caplog, "[TASK_STUCK]")) == 1


async def test_start_needs_valid_options() -> None:
    async def work(ctx: AsyncTaskContext) -> None:
        await ctx.stop_event.wait()

    async with AsyncSupervisor() as sup:
        with pytest.raises(outlast.ConfigurationError):
            sup.start("x", work, restart="sometimes")  # type: ignore[arg-type]
        sup.start("x", work)
        with pytest.raises(outlast.ConfigurationError, match="already running"):
            sup.start("x", work)


async def test_a_signal_stops_tasks_then_reaches_the_previous_handler() -> None:
    calls: list[int] = []
    chained = asyncio.Event()

    def previous(signum: int, frame: object) -> None:
        calls.append(signum)
        chained.set()

    async def worker(ctx: AsyncTaskContext) -> None:
        while await ctx.sleep(30):
            pass

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        sup = AsyncSupervisor(backoff=0)
        sup.start("worker", worker)
        restore = sup.install_signal_handlers([signal.SIGUSR1])
        signal.raise_signal(signal.SIGUSR1)
        await asyncio.wait_for(chained.wait(), WAIT)
        assert calls == [signal.SIGUSR1]
        assert sup.status()["worker"].state == "stopped"
        restore()
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)
