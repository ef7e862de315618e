"""The pools outlast built, and how full they are: what the metrics exporters read.

Each driver integration registers the pools its factories make (psycopg's
pools, SQLAlchemy engines, asyncpg pools, outlast's psycopg2 pool) with a
function that reads the pool's own figures into one shape, `PoolStats`. The
registry holds the pools weakly: a pool that is gone is simply not reported.
(A pool that refuses weak references -- asyncpg's -- is held until it closes:
its `closed` predicate says when to let go.)
Figures a driver does not keep are None (SQLAlchemy and asyncpg do not count
waiting requests or checkout timeouts; psycopg's pool and outlast's psycopg2
pool do).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PoolStats", "RegisteredPool", "live_pools", "register_pool"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStats:
    """One pool's figures now (counts are connections; totals are since it started)."""

    idle: int
    used: int
    max: int | None
    pending: int | None = None
    """Requests waiting for a connection right now."""
    timeouts: int | None = None
    """Requests that gave up waiting for a connection (total)."""
    wait_seconds: float | None = None
    """Time requests spent waiting for a connection (total)."""


@dataclass(frozen=True, slots=True)
class RegisteredPool:
    """A live pool: its name (unique in the process), driver, Guard and current figures."""

    name: str
    driver: str
    guard: str | None
    stats: PoolStats


_lock = threading.Lock()
_ids = itertools.count(1)
# id -> (a reference to the pool, name, driver, guard name, reader, closed predicate)
_Entry = tuple[
    Callable[[], Any], str, str, str | None, Callable[[Any], PoolStats], Callable[[Any], bool]
]
_pools: dict[int, _Entry] = {}


def _never_closed(pool: Any) -> bool:
    return False


def register_pool(
    pool: Any,
    *,
    driver: str,
    guard: Any = None,
    reader: Callable[[Any], PoolStats],
    name: str | None = None,
    closed: Callable[[Any], bool] = _never_closed,
) -> None:
    """Report `pool` through `reader(pool) -> PoolStats` from now on.

    Held weakly; a pool that refuses weak references is held until
    `closed(pool)` says it is closed.
    """
    number = next(_ids)
    label = name or f"{driver}-{number}"
    guard_name = getattr(guard, "name", None) if guard is not None else None

    def forget(_: object, key: int = number) -> None:
        with _lock:
            _pools.pop(key, None)

    ref: Callable[[], Any]
    try:
        ref = weakref.ref(pool, forget)
    except TypeError:
        ref = lambda: pool  # noqa: E731 - the same shape as a weak reference
    with _lock:
        _pools[number] = (ref, label, driver, guard_name, reader, closed)


def live_pools() -> list[RegisteredPool]:
    """Every registered pool still alive, with its figures (a failing reader is skipped)."""
    with _lock:
        entries = list(_pools.items())
    out: list[RegisteredPool] = []
    for key, (ref, name, driver, guard, reader, closed) in entries:
        pool = ref()
        if pool is None:
            continue
        if closed(pool):
            with _lock:
                _pools.pop(key, None)
            continue
        try:
            stats = reader(pool)
        except Exception:  # a closed or half-built pool: nothing to report
            continue
        out.append(RegisteredPool(name, driver, guard, stats))
    return out
