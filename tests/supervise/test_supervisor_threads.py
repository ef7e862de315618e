"""Supervisor (threads): crashes restart with backoff, intensity limits, stalls, clean stops."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import outlast
from outlast.supervise import Supervisor, TaskStatus, ThreadTaskContext, beat, current

WAIT = 20.0  # generous: the machine is shared


def _until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="outlast")


@pytest.fixture
def sup() -> Iterator[Supervisor]:
    supervisor = Supervisor("test", backoff=0)
    yield supervisor
    assert supervisor.stop(timeout=WAIT) == []


def _tagged(caplog: pytest.LogCaptureFixture, tag: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "outlast" and r.getMessage().startswith(tag)]


def test_a_task_that_crashes_every_third_run_restarts_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backoff = outlast.Backoff(initial=0.02, multiplier=2.0, cap=0.32, jitter=0.0)
    starts: list[float] = []
    done = threading.Event()

    def work(ctx: ThreadTaskContext) -> None:
        starts.append(time.monotonic())
        if len(starts) == 9:
            done.set()
            ctx.stop_event.wait(WAIT)
            return
        if len(starts) % 3 == 0:
            raise ValueError("every third run fails")

    with Supervisor(backoff=backoff, max_restarts=None) as sup:
        sup.start("flaky", work)
        assert done.wait(WAIT)
        status = sup.status()["flaky"]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    expected = [backoff.base(n) for n in range(1, 9)]  # 0.02, 0.04, ... capped at 0.32
    assert all(gap >= want * 0.9 for gap, want in zip(gaps, expected, strict=True)), gaps
    assert expected == sorted(expected) and expected[-1] == 0.32
    assert status.restarts == 8
    assert status.last_error == "ValueError: every third run fails"
    crashes = _tagged(caplog, "[THREAD_CRASH]")
    assert len(crashes) == 2  # runs 3 and 6, each logged exactly once
    text = crashes[0].getMessage()
    assert "name=flaky" in text and "Traceback" in text and "in work" in text


def test_a_task_that_always_raises_fails_at_the_intensity_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed: list[TaskStatus] = []
    reported = threading.Event()

    def on_failure(status: TaskStatus) -> None:
        failed.append(status)
        reported.set()

    def broken(ctx: ThreadTaskContext) -> None:
        raise RuntimeError("cannot connect to postgres://app:hunter2@db/app")

    with Supervisor(backoff=0, max_restarts=3, within=60, on_failure=on_failure) as sup:
        sup.start("broken", broken)
        assert reported.wait(WAIT)
        status = sup.status()["broken"]
        health = sup.health()
    assert status.state == "failed" and status.restarts == 3
    assert failed[0].name == "broken" and failed[0].state == "failed"
    assert status.last_error is not None and status.last_error.startswith("RuntimeError: ")
    assert "hunter2" not in status.last_error
    assert health["status"] == "fail"
    assert health["tasks"]["broken"]["state"] == "failed"
    json.dumps(health)
    assert len(_tagged(caplog, "[THREAD_CRASH]")) == 4  # the first run and 3 restarts
    assert len(_tagged(caplog, "[TASK_FAILED]")) == 1
    assert not any("hunter2" in r.getMessage() for r in caplog.records)


def test_escalation_stops_every_task() -> None:
    stopped = threading.Event()

    def patient(ctx: ThreadTaskContext) -> None:
        while ctx.sleep(5):
            pass
        stopped.set()

    def broken(ctx: ThreadTaskContext) -> None:
        raise RuntimeError("bug")

    sup = Supervisor(backoff=0, max_restarts=1, on_failure="escalate")
    sup.start("patient", patient)
    sup.start("broken", broken)
    assert sup.wait(WAIT)
    assert stopped.wait(WAIT)
    assert sup.stop(timeout=WAIT) == []
    assert sup.escalated
    assert sup.status()["patient"].state == "stopped"
    assert sup.status()["broken"].state == "failed"


def test_a_task_that_hangs_is_reported_stalled_once(
    sup: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()

    def hangs(ctx: ThreadTaskContext) -> None:
        ctx.beat()
        release.wait(WAIT)  # stuck in a call that never returns, no heartbeat
        while ctx.sleep(0.02):
            ctx.beat()

    sup.start("hangs", hangs, heartbeat=0.5)
    assert _until(lambda: sup.status()["hangs"].state == "stalled")
    assert sup.health()["status"] == "warn"
    assert _until(lambda: len(_tagged(caplog, "[TASK_STALLED]")) == 1)
    release.set()
    assert _until(lambda: sup.status()["hangs"].state == "running")
    assert _until(lambda: len(_tagged(caplog, "[TASK_ALIVE]")) == 1)
    assert len(_tagged(caplog, "[TASK_STALLED]")) == 1
    assert sup.health()["status"] == "pass"


def test_a_task_that_beats_is_not_stalled(sup: Supervisor) -> None:
    beats = threading.Semaphore(0)

    def busy(ctx: ThreadTaskContext) -> None:
        while ctx.sleep(0.01):
            beat()  # the module-level helper finds the current task
            beats.release()

    sup.start("busy", busy, heartbeat=2.0)
    for _ in range(50):
        assert beats.acquire(timeout=WAIT)
    status = sup.status()["busy"]
    assert status.state == "running"
    assert status.last_heartbeat is not None and status.last_heartbeat <= time.time()


def test_sleeping_through_ctx_sleep_is_not_a_stall(sup: Supervisor) -> None:
    woke = threading.Event()

    def patient(ctx: ThreadTaskContext) -> None:
        ctx.sleep(0.6)  # three times the heartbeat limit, on purpose
        woke.set()
        ctx.stop_event.wait(WAIT)

    sup.start("patient", patient, heartbeat=0.2, restart="never")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert sup.status()["patient"].state == "running"
        time.sleep(0.02)
    assert woke.wait(WAIT)


def test_restart_policies_and_final_states(sup: Supervisor) -> None:
    runs = {"once": 0, "retry": 0}

    def once(ctx: ThreadTaskContext) -> None:
        runs["once"] += 1

    def retry_once(ctx: ThreadTaskContext) -> None:
        runs["retry"] += 1
        if runs["retry"] == 1:
            raise ValueError("first run fails")

    def never_again(ctx: ThreadTaskContext) -> None:
        raise ValueError("no restart")

    sup.start("once", once, restart="never")
    sup.start("retry", retry_once, restart="on_failure")
    sup.start("never", never_again, restart="never")
    assert _until(
        lambda: [s.state for s in sup.status().values()] == ["finished", "finished", "failed"]
    )
    assert runs == {"once": 1, "retry": 2}
    assert sup.status()["retry"].restarts == 1
    assert sup.status()["never"].restarts == 0


def test_context_is_visible_through_current(sup: Supervisor) -> None:
    seen: list[object] = []
    done = threading.Event()

    def work(ctx: ThreadTaskContext) -> None:
        seen.append(current())
        seen.append(ctx)
        done.set()

    assert current() is None
    beat()  # a no-op outside a task
    sup.start("ctx", work, restart="never")
    assert done.wait(WAIT)
    assert seen[0] is seen[1]
    assert isinstance(seen[0], ThreadTaskContext) and seen[0].name == "ctx"


def test_a_thousand_restarts_leave_no_thread_behind() -> None:
    before = {t.ident for t in threading.enumerate()}
    runs = 0
    done = threading.Event()
    peak = 0

    def churn(ctx: ThreadTaskContext) -> None:
        nonlocal runs, peak
        runs += 1
        peak = max(peak, threading.active_count())
        if runs > 1000:
            done.set()
            ctx.stop_event.wait(WAIT)
        elif runs % 2:
            raise ValueError("crash")

    logging.getLogger("outlast").disabled = True  # 500 tracebacks are not the point here
    try:
        sup = Supervisor(backoff=0, max_restarts=None)
        sup.start("churn", churn)
        assert done.wait(WAIT * 3)
        assert sup.status()["churn"].restarts == 1000
        assert sup.stop(timeout=WAIT) == []
    finally:
        logging.getLogger("outlast").disabled = False
    assert peak <= len(before) + 1
    assert {t.ident for t in threading.enumerate()} <= before


def test_fifty_tasks_stop_within_the_timeout() -> None:
    before = threading.active_count()
    running = threading.Semaphore(0)

    def worker(ctx: ThreadTaskContext) -> None:
        running.release()
        while ctx.sleep(30):
            pass

    sup = Supervisor(backoff=0, stop_timeout=10)
    for i in range(50):
        sup.start(f"worker-{i}", worker, heartbeat=60)
    for _ in range(50):
        assert running.acquire(timeout=WAIT)
    started = time.monotonic()
    assert sup.stop() == []
    assert time.monotonic() - started < 10
    assert threading.active_count() <= before
    assert {s.state for s in sup.status().values()} == {"stopped"}


def test_a_thread_that_ignores_stop_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    entered = threading.Event()

    def stubborn(ctx: ThreadTaskContext) -> None:
        entered.set()
        release.wait(WAIT)

    sup = Supervisor(backoff=0)
    sup.start("stubborn", stubborn, restart="never")
    assert entered.wait(WAIT)
    started = time.monotonic()
    assert sup.stop(timeout=0.2) == ["stubborn"]
    assert time.monotonic() - started < WAIT / 2
    assert len(_tagged(caplog, "[THREAD_STUCK]")) == 1
    release.set()
    assert sup.stop(timeout=WAIT) == []  # joined for good: no orphan


def test_start_validates_its_options(sup: Supervisor) -> None:
    def work(ctx: ThreadTaskContext) -> None:
        ctx.stop_event.wait(WAIT)

    with pytest.raises(outlast.ConfigurationError):
        sup.start("x", work, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(outlast.ConfigurationError):
        sup.start("x", work, heartbeat=0)
    with pytest.raises(outlast.ConfigurationError):
        sup.start("x", work, max_restarts=-1)
    with pytest.raises(outlast.ConfigurationError):
        Supervisor(on_failure="panic")  # type: ignore[arg-type]
    sup.start("x", work)
    with pytest.raises(outlast.ConfigurationError, match="already running"):
        sup.start("x", work)
    sup.stop(timeout=WAIT)
    with pytest.raises(RuntimeError):
        sup.start("y", work)


def test_a_signal_stops_tasks_then_reaches_the_previous_handler() -> None:
    calls: list[int] = []
    stopped = threading.Event()

    def previous(signum: int, frame: object) -> None:
        calls.append(signum)

    def worker(ctx: ThreadTaskContext) -> None:
        while ctx.sleep(30):
            pass
        stopped.set()

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        sup = Supervisor(backoff=0)
        sup.start("worker", worker)
        restore = sup.install_signal_handlers([signal.SIGUSR1])
        signal.raise_signal(signal.SIGUSR1)
        assert stopped.is_set()  # the handler ran stop() before returning
        assert calls == [signal.SIGUSR1]
        assert sup.status()["worker"].state == "stopped"
        restore()
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_sigterm_stops_tasks_gracefully_then_terminates(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from outlast.supervise import Supervisor

        def worker(ctx):
            while ctx.sleep(30):
                pass
            time.sleep(0.2)  # some cleanup
            print("cleaned up", flush=True)

        sup = Supervisor()
        sup.start("worker", worker)
        sup.install_signal_handlers()
        print("ready", flush=True)
        sup.wait()
        print("not reached: SIGTERM's default action ends the process", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "cleaned up", err
    assert proc.returncode == -signal.SIGTERM
