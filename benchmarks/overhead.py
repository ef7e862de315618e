"""What a guard costs on the success path, next to the usual retry/breaker libraries.

Run:  .venv/bin/python benchmarks/overhead.py            (about 30 s)
      .venv/bin/python benchmarks/overhead.py --quick    (a smoke run)

Each figure is the best of several repeats of N calls of a trivial function,
in nanoseconds per call, with the bare call's own cost included. Ratios compare
each library with outlast doing the same job (sync with `Guard.call`, async with
`Guard.acall`, open-breaker rejection with outlast's rejection). The clock is
this process's CPU time (`time.process_time`): on a shared machine the time
other processes hold the CPU is not charged to the code under test (`--wall`
measures wall-clock time instead). The last lines compare outlast's figures
with the targets of the Guard's issue.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
import timeit
from collections.abc import Callable, Coroutine
from typing import Any

import backoff
import pybreaker
import stamina
import tenacity

import outlast

logging.getLogger("outlast").setLevel(logging.CRITICAL)


def work() -> int:
    return 1


async def awork() -> int:
    return 1


TIMER: Callable[[], float] = time.process_time

TARGETS = (
    # (the target, the row it is about, its limit in ns)
    ("sync success path <= 500 ns", "outlast Guard.call", 500.0),
    ("open-breaker rejection <= 1000 ns", "outlast open-breaker rejection", 1000.0),
)
MIN_VS_TENACITY = 20.0


def measure(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat, timer=TIMER)) / number * 1e9


def measure_async(
    make: Callable[[], Coroutine[Any, Any, object]], number: int, repeat: int
) -> float:
    async def loop() -> None:
        for _ in range(number):
            await make()

    best = float("inf")
    for _ in range(repeat):
        t0 = TIMER()
        asyncio.run(loop())
        best = min(best, TIMER() - t0)
    return best / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument("--wall", action="store_true", help="wall-clock time, not CPU time")
    args = parser.parse_args()
    if args.wall:
        global TIMER
        TIMER = time.perf_counter
    number, repeat = (2_000, 2) if args.quick else (200_000, 7)
    slow_n = max(number // 10, 200)  # the ~10 µs libraries

    guard = outlast.Guard("bench")
    decorated = guard.retrying(work)
    adecorated = guard.retrying(awork)

    t_retry = tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(work)
    t_aretry = tenacity.retry(stop=tenacity.stop_after_attempt(3), reraise=True)(awork)
    s_retry = stamina.retry(on=Exception, attempts=3)(work)
    s_aretry = stamina.retry(on=Exception, attempts=3)(awork)
    b_retry = backoff.on_exception(backoff.expo, Exception, max_tries=3)(work)
    b_aretry = backoff.on_exception(backoff.expo, Exception, max_tries=3)(awork)
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    sync_rows = [
        ("bare call", measure(work, number, repeat)),
        ("outlast Guard.call", measure(lambda: guard.call(work), number, repeat)),
        ("outlast @retrying", measure(decorated, number, repeat)),
        ("tenacity @retry", measure(t_retry, slow_n, repeat)),
        ("stamina @retry", measure(s_retry, slow_n, repeat)),
        ("backoff @on_exception", measure(b_retry, number, repeat)),
        ("pybreaker .call", measure(lambda: breaker.call(work), number, repeat)),
    ]
    async_rows = [
        ("bare await", measure_async(awork, number, repeat)),
        ("outlast Guard.acall", measure_async(lambda: guard.acall(awork), number, repeat)),
        ("outlast @retrying (async)", measure_async(adecorated, number, repeat)),
        ("tenacity @retry (async)", measure_async(t_aretry, slow_n, repeat)),
        ("stamina @retry (async)", measure_async(s_aretry, slow_n, repeat)),
        ("backoff @on_exception (async)", measure_async(b_aretry, number, repeat)),
    ]

    # Open breakers: how much a rejected call costs.
    open_guard = outlast.Guard(
        "open",
        breaker=outlast.Breaker(failure_threshold=1, open_for=3600, max_open_for=3600),
        listeners=[],
    )
    open_guard.record_failure(ConnectionRefusedError(111, "Connection refused"))
    assert open_guard.breaker_state == "open", "the benchmark needs classify() to see a refusal"

    def rejected() -> None:
        try:
            open_guard.call(work)
        except outlast.DatabaseUnavailable:
            pass

    open_breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    open_breaker.open()

    def py_rejected() -> None:
        try:
            open_breaker.call(work)
        except pybreaker.CircuitBreakerError:
            pass

    open_rows = [
        ("outlast open-breaker rejection", measure(rejected, number, repeat)),
        ("pybreaker open-breaker rejection", measure(py_rejected, number, repeat)),
    ]

    clock = "wall-clock" if args.wall else "CPU"
    print(
        f"CPython {platform.python_version()} on {platform.machine()}, {sys.platform}; {clock} time"
    )
    print(f"{'':34} {'ns/call':>9}   vs outlast")
    for title, rows, ref in (
        ("sync success path", sync_rows, 1),
        ("async success path", async_rows, 1),
        ("open breaker", open_rows, 0),
    ):
        print(f"-- {title}")
        base = rows[ref][1]
        for name, ns in rows:
            ratio = "" if name.startswith("bare") else f"{ns / base:8.1f}x"
            print(f"{name:34} {ns:9.0f}   {ratio}")

    figures = dict(sync_rows + async_rows + open_rows)
    print("-- targets")
    for what, row, limit in TARGETS:
        verdict = "met" if figures[row] <= limit else "NOT met"
        print(f"{what:44} {figures[row]:7.0f} ns   {verdict}")
    ratio = figures["tenacity @retry"] / figures["outlast Guard.call"]
    verdict = "met" if ratio >= MIN_VS_TENACITY else "NOT met"
    print(f"{'sync >= 20x cheaper than tenacity':44} {ratio:7.1f} x    {verdict}")


if __name__ == "__main__":
    main()
