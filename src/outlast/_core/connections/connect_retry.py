"""Connect retries for databases that wake up on demand (the ``neon`` preset).

A Neon compute that scaled to zero is woken by the first login: until it is
up, its proxy answers "Couldn't connect to compute node" or "endpoint is
temporarily unavailable", and the compute itself "the database system is
starting up" (57P03). A second try a few hundred milliseconds later usually
gets in, so failing the request at once turns every cold start into an error.

`retry_connect` / `aretry_connect` wrap one driver connect call and retry it
on those faults only (`RETRIED_REASONS`), with a short jittered backoff,
within ``Hardening.connect_retries`` and ``Hardening.connect_retry_budget``,
and never past what is left of the current web request's budget. Faults that
waiting cannot fix (a disabled endpoint, a wrong password, a missing
database) and a connect that timed out (it already spent its whole
``connect_timeout``) are raised at once.

The Guard hears the outcome only (the final error, or the success): a normal
cold start must not count as several failures and trip its breaker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from outlast._core.faults.classify import classify
from outlast._core.faults.errors import DatabaseUnavailable
from outlast._core.guard.backoff import Backoff
from outlast._core.timing.budget import budget_remaining

if TYPE_CHECKING:
    from outlast._core.faults.fault import Fault

    from .hardening import Hardening

__all__ = ["CONNECT_BACKOFF", "RETRIED_REASONS", "aretry_connect", "next_delay", "retry_connect"]

T = TypeVar("T")

logger = logging.getLogger("outlast")

RETRIED_REASONS = frozenset(
    {
        "starting_up",  # 57P03 "the database system is starting up"
        "shutting_down",  # 57P03 as a compute suspends: the next login wakes it again
        "compute_unreachable",  # Neon: "Couldn't connect to compute node"
        "endpoint_unavailable",  # Neon: "endpoint is temporarily unavailable"
        "connection_refused",  # nothing listening yet (a compute or a server restarting)
    }
)
"""Connect-phase faults that a short wait can fix."""

CONNECT_BACKOFF = Backoff(initial=0.1, multiplier=2.0, cap=1.0, jitter=0.5)
"""0.1 s, 0.2 s, 0.4 s, 0.8 s, then 1 s, each shortened by up to half at random."""


Classifier = Callable[[BaseException], "Fault | None"]


def next_delay(
    preset: Hardening,
    retried: int,
    elapsed: float,
    error: BaseException,
    rand: float,
    *,
    classifier: Classifier | None = None,
) -> float | None:
    """The sleep before the next connect attempt, or None to raise `error` now.

    `retried` is how many retries already happened, `elapsed` the seconds since
    the first attempt started, `rand` a uniform random number in [0, 1);
    `classifier` is the Guard's (``guard.classify``), `outlast.classify` without one.
    """
    if retried >= preset.connect_retries or isinstance(error, DatabaseUnavailable):
        return None  # the Guard's breaker is open: it already said no
    fault = (classifier or classify)(error)
    if fault is None or fault.reason not in RETRIED_REASONS:
        return None
    delay = CONNECT_BACKOFF.delay(retried + 1, rand)
    if elapsed + delay > preset.connect_retry_budget:
        return None
    remaining = budget_remaining()
    if remaining is not None and delay >= remaining:
        return None  # the request's caller gives up first: fail with the real error
    logger.info(
        "[DB_CONNECT_RETRY] try=%d/%d sleep=%.2fs reason=%s",
        retried + 1,
        preset.connect_retries + 1,
        delay,
        fault.reason,
    )
    return delay


def retry_connect(
    preset: Hardening,
    connect: Callable[[], T],
    *,
    sleep: Callable[[float], object] = time.sleep,
    classifier: Classifier | None = None,
) -> T:
    """``connect()``, retried on transient connect faults as `preset` allows."""
    if not preset.connect_retries:
        return connect()
    start = time.monotonic()
    retried = 0
    while True:
        try:
            return connect()
        except Exception as error:
            elapsed = time.monotonic() - start
            delay = next_delay(
                preset, retried, elapsed, error, random.random(), classifier=classifier
            )
            if delay is None:
                raise
        retried += 1
        sleep(delay)


async def aretry_connect(
    preset: Hardening,
    connect: Callable[[], Awaitable[T]],
    *,
    classifier: Classifier | None = None,
) -> T:
    """The asyncio twin of `retry_connect` (sleeps with ``asyncio.sleep``)."""
    if not preset.connect_retries:
        return await connect()
    start = time.monotonic()
    retried = 0
    while True:
        try:
            return await connect()
        except Exception as error:
            elapsed = time.monotonic() - start
            delay = next_delay(
                preset, retried, elapsed, error, random.random(), classifier=classifier
            )
            if delay is None:
                raise
        retried += 1
        await asyncio.sleep(delay)
