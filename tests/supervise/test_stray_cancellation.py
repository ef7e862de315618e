"""A CancelledError nobody asked for is a crash, not a stop.

Supervised code often awaits things it does not own: a task started by a
library, a future shared between consumers, a connection's reader. When
someone else cancels one of those, the CancelledError comes out of the
supervised function although nobody cancelled *its* task. Before, the
supervisor read that as "stopped": the task was never restarted and
``health()`` said ``pass``; an ``@outlast.loop`` died after the tick that hit
it. Only a cancellation of the supervised Task itself (the supervisor's
``stop()``, the event loop shutting down) stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable

import pytest

import outlast
from outlast.supervise import AsyncSupervisor, AsyncTaskContext, Supervisor, ThreadTaskContext

WAIT = 20.0
QUICK = outlast.Backoff(initial=0.01, multiplier=2.0, cap=0.05, jitter=0.0)


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outlast")


def _tagged(caplog: pytest.LogCaptureFixture, tag: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "outlast" and r.getMessage().startswith(tag)
    ]


async def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


async def await_what_someone_else_cancels() -> None:
    """Await a helper task that another part of the program cancels."""
    helper = asyncio.get_running_loop().create_task(asyncio.sleep(60))
    asyncio.get_running_loop().call_later(0.005, helper.cancel)
    await helper  # raises CancelledError here; our own task was never cancelled


async def test_a_stray_cancellation_is_logged_restarted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    steady = asyncio.Event()
    health: list[str] = []

    async def consumer(ctx: AsyncTaskContext) -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            await await_what_someone_else_cancels()
        steady.set()
        await ctx.stop_event.wait()

    async with AsyncSupervisor(backoff=QUICK, max_restarts=5) as sup:
        sup.start("consumer", consumer)

        def watch() -> bool:
            health.append(sup.health()["status"])
            return steady.is_set()

        assert await _until(watch)
        status = sup.status()["consumer"]
        assert status.state == "running"
        assert status.restarts == 2
        assert status.last_error is not None and status.last_error.startswith("CancelledError")
        assert json.dumps(sup.health())  # the report stays serialisable
    crashes = _tagged(caplog, "[THREAD_CRASH]")
    assert len(crashes) == 2 and all("name=consumer" in c for c in crashes)
    assert "CancelledError" in crashes[0] and "restart_in=" in crashes[0]
    # The supervisor's own stop is still a stop, not a crash.
    assert sup.status()["consumer"].state == "stopped"
    assert len(_tagged(caplog, "[THREAD_CRASH]")) == 2


async def test_a_task_cancelled_by_strangers_every_run_fails_and_health_says_so() -> None:
    async def doomed(ctx: AsyncTaskContext) -> None:
        await await_what_someone_else_cancels()

    sup = AsyncSupervisor(backoff=0, max_restarts=3)
    sup.start("doomed", doomed)
    try:
        assert await _until(lambda: sup.status()["doomed"].state == "failed")
        assert sup.health()["status"] == "fail"
        assert sup.status()["doomed"].restarts == 3
    finally:
        assert await sup.stop(timeout=WAIT) == []


async def test_stop_still_cancels_a_task_blocked_in_an_await(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started = asyncio.Event()

    async def stubborn(ctx: AsyncTaskContext) -> None:
        started.set()
        await asyncio.sleep(60)  # ignores ctx.stop_event

    sup = AsyncSupervisor()
    sup.start("stubborn", stubborn)
    await asyncio.wait_for(started.wait(), WAIT)
    assert await sup.stop(timeout=0.05) == ["stubborn"]
    assert sup.status()["stubborn"].state == "stopped"
    assert sup.status()["stubborn"].restarts == 0
    assert not _tagged(caplog, "[THREAD_CRASH]")


def test_the_event_loop_shutting_down_is_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    sup_box: list[AsyncSupervisor] = []

    async def forever(ctx: AsyncTaskContext) -> None:
        await asyncio.sleep(60)

    async def main() -> None:
        sup = AsyncSupervisor()
        sup_box.append(sup)
        sup.start("forever", forever)
        await asyncio.sleep(0.05)
        # main returns: asyncio.run cancels every task left, the supervised one too

    asyncio.run(main())
    assert sup_box[0].status()["forever"].state == "stopped"
    assert not _tagged(caplog, "[THREAD_CRASH]")


async def test_an_async_loop_keeps_ticking_through_stray_cancellations(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = 0
    enough = asyncio.Event()

    @outlast.loop(every=0.01, name="sync_leads")
    async def sync_leads() -> None:
        nonlocal ticks
        ticks += 1
        if ticks >= 12:
            enough.set()
        elif ticks >= 3:  # from the third tick on, what it awaits gets cancelled
            await await_what_someone_else_cancels()

    async with AsyncSupervisor() as sup:
        sync_leads.start(sup)
        await asyncio.wait_for(enough.wait(), WAIT)  # before: stopped after 3 ticks
        status = sup.status()["sync_leads"]
        assert status.state == "running" and status.restarts == 0
    errors = _tagged(caplog, "[LOOP_ERROR]")
    assert len(errors) == 9 and all("CancelledError" in e for e in errors)
    assert sup.status()["sync_leads"].state == "stopped"


async def test_an_unsupervised_async_loop_keeps_ticking_and_still_stops() -> None:
    ticks = 0

    @outlast.loop(every=0.01)
    async def poll() -> None:
        nonlocal ticks
        ticks += 1
        await await_what_someone_else_cancels()

    stop = asyncio.Event()
    runner = asyncio.get_running_loop().create_task(poll.run_forever(stop))
    assert await _until(lambda: ticks >= 5)
    assert not runner.done()
    runner.cancel()  # cancelling the loop's own task still ends it
    with pytest.raises(asyncio.CancelledError):
        await runner


def _run_loop_that_gets_cancelled() -> None:
    async def inner() -> None:
        await await_what_someone_else_cancels()

    asyncio.run(inner())  # raises CancelledError in this thread


def test_a_thread_whose_event_loop_raises_cancelled_error_is_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    steady = threading.Event()

    def worker(ctx: ThreadTaskContext) -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            _run_loop_that_gets_cancelled()
        steady.set()
        ctx.stop_event.wait()

    sup = Supervisor(backoff=QUICK)
    try:
        sup.start("worker", worker)
        assert steady.wait(WAIT)
        status = sup.status()["worker"]
        assert status.state == "running" and status.restarts == 2
        assert status.last_error is not None and "CancelledError" in status.last_error
    finally:
        assert sup.stop(timeout=WAIT) == []
    assert len(_tagged(caplog, "[THREAD_CRASH]")) == 2


def test_a_thread_loop_keeps_ticking_through_cancelled_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = 0
    enough = threading.Event()

    @outlast.loop(every=0.01, name="bridge")
    def bridge() -> None:
        nonlocal ticks
        ticks += 1
        if ticks >= 6:
            enough.set()
        else:
            _run_loop_that_gets_cancelled()

    sup = Supervisor()
    try:
        bridge.start(sup)
        assert enough.wait(WAIT)
        assert sup.status()["bridge"].state == "running"
        assert sup.status()["bridge"].restarts == 0
    finally:
        assert sup.stop(timeout=WAIT) == []
    assert len(_tagged(caplog, "[LOOP_ERROR]")) == 5
