"""`snapshot()`: everything the metrics exporters report, read at one moment.

Besides outlast's own objects it counts the process's Python threads and, when
read on an event loop, its asyncio tasks: what a soak watches for leaks.

Guards with the same name (two processes' worth of tests, a Guard rebuilt on
reload) are reported as one: their counters add up and the database counts as
down when any of them says so, so a scrape never shows duplicate series.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from outlast._core.connections.pools import RegisteredPool, live_pools
from outlast._core.guard.base import LIVE_GUARDS
from outlast._core.guard.counters import GuardCounters
from outlast._core.guard.state import DatabaseState
from outlast._core.supervise.base import LIVE_SUPERVISORS
from outlast._core.supervise.record import TaskStatus
from outlast._core.timing.operations import OPERATIONS, OperationHistogram
from outlast._core.web.base import LIVE_WEB

__all__ = ["GuardView", "Snapshot", "TaskView", "snapshot"]


@dataclass(frozen=True, slots=True)
class GuardView:
    """One database as its Guard(s) of that name see it."""

    name: str
    up: bool
    breaker: str
    """``closed``, ``half_open`` or ``open`` (the worst of same-named Guards)."""
    outages: int
    downtime: float
    """Seconds down in total, the current outage included."""
    down_for: float
    """Seconds the current outage has lasted (0 while up)."""
    counters: GuardCounters


@dataclass(frozen=True, slots=True)
class TaskView:
    """One supervised task (`supervisor` names its supervisor)."""

    supervisor: str
    status: TaskStatus
    heartbeat_age: float | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What outlast knows now; exporters translate it, nothing else."""

    at: float
    guards: tuple[GuardView, ...] = ()
    pools: tuple[RegisteredPool, ...] = ()
    tasks: tuple[TaskView, ...] = ()
    answers: dict[tuple[str, int, str, str], int] = field(default_factory=dict)
    """(guard, status, error, reason) -> answers the web integrations gave for faults."""
    operations: tuple[OperationHistogram, ...] = ()
    threads: int = 0
    """Python threads alive in this process (a thread leaked per outage shows here)."""
    asyncio_tasks: int | None = None
    """Unfinished asyncio tasks of the event loop the snapshot was read on
    (None when read outside one: a WSGI process, an exporter's own thread)."""


_BREAKER_ORDER = {"closed": 0, "half_open": 1, "open": 2}


def snapshot() -> Snapshot:
    """Read every live Guard, pool, supervisor and web integration once."""
    now = time.time()
    by_name: dict[str, list[tuple[DatabaseState, GuardCounters]]] = {}
    for guard in list(LIVE_GUARDS):
        by_name.setdefault(guard.name, []).append((guard.state, guard.counters()))
    guards = tuple(_merge(name, views, now) for name, views in sorted(by_name.items()))
    tasks: list[TaskView] = []
    for supervisor in list(LIVE_SUPERVISORS):
        for status in supervisor.status().values():
            age = None if status.last_heartbeat is None else max(0.0, now - status.last_heartbeat)
            tasks.append(TaskView(supervisor.name, status, age))
    answers: dict[tuple[str, int, str, str], int] = {}
    for web in list(LIVE_WEB):
        guard_name = web.guard_name
        counted = web.answer_counts()
        for (code, error, reason), n in counted.items():
            key = (guard_name, code, error, reason)
            answers[key] = answers.get(key, 0) + n
    return Snapshot(
        at=now,
        guards=guards,
        pools=tuple(live_pools()),
        tasks=tuple(sorted(tasks, key=lambda t: (t.supervisor, t.status.name))),
        answers=answers,
        operations=tuple(OPERATIONS.snapshot()),
        threads=threading.active_count(),
        asyncio_tasks=_asyncio_tasks(),
    )


def _asyncio_tasks() -> int | None:
    # A scrape served by an async route (Starlette, FastAPI) runs on the
    # service's event loop: its tasks are the ones a leak would pile up.
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return len(asyncio.all_tasks(loop))


def _merge(name: str, views: list[tuple[DatabaseState, GuardCounters]], now: float) -> GuardView:
    states = [s for s, _ in views]
    counters = [c for _, c in views]
    down_since = [s.down_since for s in states if s.down_since is not None]
    return GuardView(
        name=name,
        up=all(s.up for s in states),
        breaker=max((s.breaker for s in states), key=lambda b: _BREAKER_ORDER.get(b, 0)),
        outages=sum(s.outages for s in states),
        downtime=sum(s.downtime for s in states),
        down_for=max(0.0, now - min(down_since)) if down_since else 0.0,
        counters=_add(counters),
    )


def _add(counters: list[GuardCounters]) -> GuardCounters:
    if len(counters) == 1:
        return counters[0]

    def total(attr: str) -> int:
        return sum(getattr(c, attr) for c in counters)

    def merged(attr: str) -> Any:
        out: dict[Any, int] = {}
        for c in counters:
            for key, n in getattr(c, attr).items():
                out[key] = out.get(key, 0) + n
        return out

    return GuardCounters(
        calls=total("calls"),
        rejected=total("rejected"),
        retries=total("retries"),
        succeeded_after_retry=total("succeeded_after_retry"),
        failed_after_retry=total("failed_after_retry"),
        failed_without_retry=total("failed_without_retry"),
        faults=MappingProxyType(merged("faults")),
        transitions=MappingProxyType(merged("transitions")),
        commits=MappingProxyType(merged("commits")),
    )
