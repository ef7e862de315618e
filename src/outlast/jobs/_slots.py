"""`Slots`: a leased per-key semaphore on PostgreSQL, for workers outlast does not run.

::

    recording_slots = outlast.jobs.Slots(DSN, "recording", limit=3)

    with recording_slots.acquire(business_id, timeout=30) as slot:   # Celery, RQ, a thread
        download(...)                                                 # slot.number in 1..3

At most `limit` holders per key at once, across every process. Each holder is
a row in ``leases`` under the primary key (name, key, n): two processes
taking the same free number at the same moment cannot both insert it. While
held, a background heartbeat pushes the lease forward; a holder that dies
stops heart-beating and its slot is taken over by the next `acquire` once the
lease has expired (a conditional delete on the lease as read, so a holder
whose heartbeat landed first keeps it).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import weakref
from types import TracebackType
from typing import Any

from outlast import ConfigurationError, Guard, Hardening

from ._jobs import _default_guard
from ._model import Seconds, as_seconds, worker_id
from ._schema import ainstall, check_schema_name, install

__all__ = ["Slot", "Slots"]

logger = logging.getLogger("outlast.jobs")

_counter = itertools.count(1)


def _sql(s: str) -> dict[str, str]:
    return {
        "reap": f"""DELETE FROM {s}.leases
                    WHERE name = %(name)s AND key = %(key)s AND lease_until < now()
                    RETURNING n, holder""",
        "take": f"""INSERT INTO {s}.leases (name, key, n, holder, lease_until)
                    SELECT %(name)s, %(key)s, g.n, %(holder)s,
                           now() + %(lease)s * interval '1 second'
                    FROM generate_series(1, %(limit)s) AS g(n)
                    WHERE NOT EXISTS (SELECT 1 FROM {s}.leases l
                                      WHERE l.name = %(name)s AND l.key = %(key)s AND l.n = g.n)
                    ORDER BY g.n LIMIT 1
                    ON CONFLICT DO NOTHING
                    RETURNING n""",
        "beat": f"""UPDATE {s}.leases SET lease_until = now() + %(lease)s * interval '1 second'
                    WHERE holder = ANY(%(holders)s) RETURNING holder""",
        "release": f"""DELETE FROM {s}.leases
                       WHERE name = %(name)s AND key = %(key)s AND n = %(n)s
                         AND holder = %(holder)s
                       RETURNING 1""",
    }


class Slot:
    """A held slot: `number` (1..limit); `lost` turns True if its lease was taken over."""

    def __init__(self, owner: Slots, key: str, number: int, holder: str) -> None:
        self._owner = owner
        self.key = key
        self.number = number
        self.holder = holder
        self.lost = False
        self.released = False

    def __repr__(self) -> str:
        return f"<Slot {self._owner.name}:{self.key}#{self.number}>"

    def release(self) -> None:
        """Give the slot back (idempotent)."""
        self._owner._release(self)

    async def arelease(self) -> None:
        """The asyncio twin of `release`."""
        await self._owner._arelease(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.arelease()


class Slots:
    """At most `limit` concurrent holders per key of `name`, leased on PostgreSQL.

    `lease` is how long a slot survives its holder's silence (heartbeats
    every third of it); `poll_interval` how often a waiting `acquire` tries
    again. Durations accept seconds or timedelta.
    """

    def __init__(
        self,
        dsn: str,
        name: str,
        limit: int,
        *,
        lease: Seconds = 30.0,
        schema: str = "outlast_jobs",
        poll_interval: Seconds = 0.2,
        guard: Guard | None = None,
        preset: str | Hardening = "default",
    ) -> None:
        if not isinstance(dsn, str) or not dsn:
            raise ConfigurationError("dsn must be a non-empty string")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"limit must be an integer >= 1, got {limit!r}")
        self.dsn = dsn
        self.name = name
        self.limit = limit
        self.lease = as_seconds(lease, "lease")
        self.schema = check_schema_name(schema)
        self.poll_interval = as_seconds(poll_interval, "poll_interval")
        self.guard = guard if guard is not None else _default_guard(f"slots:{name}")
        self.preset = preset
        self._sql = _sql(self.schema)
        self._me = worker_id()
        self._held: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._pool: Any = None
        self._apool: Any = None
        self._installed = False
        self._beater: threading.Thread | None = None
        self._abeater: asyncio.Task[None] | None = None
        self._closed = threading.Event()

    def __repr__(self) -> str:
        return f"<outlast.jobs.Slots {self.name!r} limit={self.limit}>"

    # -- sync -------------------------------------------------------------------

    def _connection(self) -> Any:
        with self._lock:
            if self._pool is None:
                import outlast.psycopg

                self._pool = outlast.psycopg.ConnectionPool(
                    self.dsn,
                    guard=self.guard,
                    preset=self.preset,
                    min_size=1,
                    max_size=2,
                    open=True,
                    kwargs={"autocommit": True},
                    name=f"slots-{self.name}",
                )
            pool = self._pool
        if not self._installed:
            with pool.connection() as conn:
                install(conn, self.schema)
            self._installed = True
        return pool.connection()

    def _params(self, key: str, holder: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": key,
            "holder": holder,
            "lease": self.lease,
            "limit": self.limit,
        }

    def try_acquire(self, key: str | int) -> Slot | None:
        """Take a free slot for `key` now, or return None."""
        k = str(key)
        holder = f"{self._me}:{next(_counter)}"
        params = self._params(k, holder)
        with self._connection() as conn:
            row = conn.execute(self._sql["take"], params).fetchone()
            if row is None and conn.execute(self._sql["reap"], params).fetchall():
                row = conn.execute(self._sql["take"], params).fetchone()
        if row is None:
            return None
        return self._took(Slot(self, k, int(row[0]), holder))

    def acquire(self, key: str | int, *, timeout: Seconds | None = None) -> Slot:
        """Wait for a slot for `key` (forever, or `timeout` seconds: then `TimeoutError`)."""
        limit = None if timeout is None else as_seconds(timeout, "timeout", allow_zero=True)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            try:
                slot = self.try_acquire(key)
            except Exception as exc:
                if self.guard.record_failure(exc, op="slots.acquire") is None:
                    raise
                slot = None  # the database is unwell: keep waiting, within the timeout
            if slot is not None:
                return slot
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no {self.name!r} slot for key {key!r} within {limit}s "
                    f"(limit {self.limit} per key)"
                )
            wait = self.poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            time.sleep(wait)

    def _took(self, slot: Slot) -> Slot:
        logger.info(
            "[WORKER_SLOT_ACQUIRED] name=%s key=%s slot=%d",
            self.name,
            slot.key,
            slot.number,
            extra={"outlast_event": "slot_acquired", "key": slot.key},
        )
        with self._lock:
            self._held[slot.holder] = slot
            if self._beater is None:
                self._beater = threading.Thread(
                    target=_beat_forever,
                    args=(weakref.ref(self), self._closed),
                    name=f"slots-{self.name}-heartbeat",
                    daemon=True,
                )
                self._beater.start()
        return slot

    def _beat(self) -> None:
        with self._lock:
            held = list(self._held.values())
        if not held:
            return
        params = {"lease": self.lease, "holders": [s.holder for s in held]}
        with self._connection() as conn:
            alive = {r[0] for r in conn.execute(self._sql["beat"], params).fetchall()}
        self._mark_lost(held, alive)

    def _mark_lost(self, held: list[Slot], alive: set[str]) -> None:
        for slot in held:
            if slot.holder not in alive and not slot.released and not slot.lost:
                slot.lost = True
                logger.error(
                    "[WORKER_LEASE_LOST] name=%s key=%s slot=%d: its lease expired",
                    self.name,
                    slot.key,
                    slot.number,
                    extra={"outlast_event": "lease_lost", "key": slot.key},
                )

    def _release(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        with self._lock:
            self._held.pop(slot.holder, None)
        params = self._params(slot.key, slot.holder) | {"n": slot.number}
        try:
            with self._connection() as conn:
                conn.execute(self._sql["release"], params)
        except Exception as exc:
            # The lease expires on its own; never turn the caller's success into an error.
            self.guard.record_failure(exc, op="slots.release")
            logger.warning(
                "[WORKER_RELEASE_SLOT] name=%s key=%s slot=%d reason=release_failed "
                "(the lease expires within %ss)",
                self.name,
                slot.key,
                slot.number,
                self.lease,
            )
            return
        logger.info(
            "[WORKER_RELEASE_SLOT] name=%s key=%s slot=%d reason=released",
            self.name,
            slot.key,
            slot.number,
            extra={"outlast_event": "slot_released", "key": slot.key},
        )

    def close(self) -> None:
        """Stop heart-beating and close the pools (held slots then expire with their lease)."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # -- async --------------------------------------------------------------------

    async def _aconnection(self) -> Any:
        if self._apool is None:
            import outlast.psycopg

            pool = outlast.psycopg.AsyncConnectionPool(
                self.dsn,
                guard=self.guard,
                preset=self.preset,
                min_size=1,
                max_size=2,
                kwargs={"autocommit": True},
                name=f"aslots-{self.name}",
            )
            await pool.open()
            self._apool = pool
        if not self._installed:
            async with self._apool.connection() as conn:
                await ainstall(conn, self.schema)
            self._installed = True
        return self._apool.connection()

    async def atry_acquire(self, key: str | int) -> Slot | None:
        """The asyncio twin of `try_acquire`."""
        k = str(key)
        holder = f"{self._me}:{next(_counter)}"
        params = self._params(k, holder)
        async with await self._aconnection() as conn:
            row = await (await conn.execute(self._sql["take"], params)).fetchone()
            if row is None and await (await conn.execute(self._sql["reap"], params)).fetchall():
                row = await (await conn.execute(self._sql["take"], params)).fetchone()
        if row is None:
            return None
        slot = Slot(self, k, int(row[0]), holder)
        with self._lock:
            self._held[holder] = slot
        if self._abeater is None or self._abeater.done():
            self._abeater = asyncio.get_running_loop().create_task(self._abeat_forever())
        return slot

    async def aacquire(self, key: str | int, *, timeout: Seconds | None = None) -> Slot:
        """The asyncio twin of `acquire`."""
        limit = None if timeout is None else as_seconds(timeout, "timeout", allow_zero=True)
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            try:
                slot = await self.atry_acquire(key)
            except Exception as exc:
                if self.guard.record_failure(exc, op="slots.acquire") is None:
                    raise
                slot = None
            if slot is not None:
                return slot
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no {self.name!r} slot for key {key!r} within {limit}s")
            wait = self.poll_interval
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            await asyncio.sleep(wait)

    async def _abeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            with self._lock:
                held = list(self._held.values())
            if not held:
                return
            try:
                params = {"lease": self.lease, "holders": [s.holder for s in held]}
                async with await self._aconnection() as conn:
                    cur = await conn.execute(self._sql["beat"], params)
                    alive = {r[0] for r in await cur.fetchall()}
                self._mark_lost(held, alive)
            except Exception as exc:
                if self.guard.record_failure(exc, op="slots.heartbeat") is None:
                    logger.exception("[THREAD_CRASH] slots heartbeat")

    async def _arelease(self, slot: Slot) -> None:
        if slot.released:
            return
        slot.released = True
        with self._lock:
            self._held.pop(slot.holder, None)
        params = self._params(slot.key, slot.holder) | {"n": slot.number}
        try:
            async with await self._aconnection() as conn:
                await conn.execute(self._sql["release"], params)
        except Exception as exc:
            self.guard.record_failure(exc, op="slots.release")
            logger.warning(
                "[WORKER_RELEASE_SLOT] name=%s key=%s slot=%d reason=release_failed",
                self.name,
                slot.key,
                slot.number,
            )

    async def aclose(self) -> None:
        """The asyncio twin of `close`."""
        if self._abeater is not None:
            self._abeater.cancel()
        self.close()
        pool, self._apool = self._apool, None
        if pool is not None:
            await pool.close()


def _beat_forever(ref: weakref.ref[Slots], closed: threading.Event) -> None:
    """The sync heartbeat thread: holds only a weak reference to its `Slots`."""
    while True:
        slots = ref()
        if slots is None:
            return
        interval = slots.lease / 3
        del slots
        if closed.wait(interval):
            return
        slots = ref()
        if slots is None:
            return
        try:
            slots._beat()
        except Exception as exc:
            if slots.guard.record_failure(exc, op="slots.heartbeat") is None:
                logger.exception("[THREAD_CRASH] slots heartbeat")
        del slots
