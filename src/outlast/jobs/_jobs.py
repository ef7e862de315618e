"""`Jobs`: the queue's configuration, its handlers, and enqueueing.

::

    jobs = outlast.jobs.Jobs(DSN, limits={"recording": 3})

    @jobs.handler("recording")
    def download_recording(job): ...

    jobs.enqueue("recording", {"call_sid": sid}, key=business_id)            # own transaction
    jobs.enqueue("recording", {"call_sid": sid}, key=business_id, conn=conn)  # the caller's

Without ``conn`` a job is written through a small hardened pool under the
queue's Guard, with `Guard.transaction` (a COMMIT lost in flight is resolved
with ``pg_xact_status``, never re-sent). With ``conn`` it is one more statement
in the caller's transaction: nothing is committed here.
"""

from __future__ import annotations

import datetime
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import outlast
from outlast import Backoff, ConfigurationError, Guard, Hardening

from ._conn import arun_on, run_on
from ._model import (
    Handler,
    HandlerFn,
    NewJob,
    Seconds,
    as_seconds,
    check_limits,
    enqueue_params,
)
from ._schema import SCHEMA_VERSION, ainstall, check_schema_name, install
from ._sql import enqueue_sql

__all__ = ["Jobs"]

F = TypeVar("F", bound=HandlerFn)

#: Rows per INSERT statement in a batch enqueue (eight parameters each).
_CHUNK = 1000
#: A retry waits 1 s, 2 s, 4 s, ... up to 5 minutes (jittered).
DEFAULT_RETRY_BACKOFF = Backoff(initial=1.0, multiplier=2.0, cap=300.0, jitter=0.5)


def _default_guard(name: str) -> Guard:
    # A worker must be running jobs again within a second of a recovery: it
    # probes at least every 0.25 s, and the breaker never stays open longer.
    return Guard(
        name,
        retry=outlast.Retry(attempts=3, backoff=Backoff(initial=0.05, cap=0.25)),
        breaker=outlast.Breaker(open_for=0.25, max_open_for=0.25),
    )


class Jobs:
    """A durable job queue on PostgreSQL: configuration, handlers and enqueueing.

    `dsn` is the database (libpq key=value or URL). `schema` holds the
    queue's tables (created and upgraded on first use; `install()` does it
    explicitly). `limits` caps running jobs per key for a kind
    (``{"recording": 3}``: at most three recordings of one business at once);
    every worker of a queue must use the same limits. `lease` is how long a
    claimed job stays a worker's without a heartbeat (workers heartbeat every
    third of it); a job whose worker died is re-run after at most one lease.
    `max_attempts` is the default number of tries before a job becomes a
    dead letter; `keep_done` keeps finished jobs as ``done`` rows instead of
    deleting them. `guard` (default: a fast-probing Guard named ``jobs``)
    sees every fault; `preset` is the connection hardening. `listen` turns
    LISTEN/NOTIFY wake-ups on or off (default: on, except behind a pooler
    detected from the DSN; polling every `poll_interval` is always on).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = "outlast_jobs",
        limits: Mapping[str, int] | None = None,
        lease: Seconds = 30.0,
        max_attempts: int = 5,
        keep_done: bool = False,
        guard: Guard | None = None,
        preset: str | Hardening = "default",
        listen: bool | None = None,
        poll_interval: Seconds = 1.0,
    ) -> None:
        if dsn is not None and not isinstance(dsn, str):
            raise ConfigurationError("dsn must be a string (libpq key=value or a URL)")
        self.dsn = dsn
        self.schema = check_schema_name(schema)
        self.limits = check_limits(limits)
        self.lease = as_seconds(lease, "lease")
        if self.lease < 1.0:
            raise ConfigurationError(f"lease must be at least 1 second, got {self.lease}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.keep_done = bool(keep_done)
        if guard is not None and not isinstance(guard, Guard):
            raise ConfigurationError(f"guard must be an outlast.Guard, got {guard!r}")
        self.guard = guard if guard is not None else _default_guard("jobs")
        self.hardening = (
            outlast.preset_for(dsn, preset) if dsn else outlast.preset_for(None, preset)
        )
        self.preset = preset
        # Behind a transaction pooler LISTEN is accepted but notifications never arrive.
        self.listen = self.hardening.startup_options if listen is None else bool(listen)
        self.poll_interval = as_seconds(poll_interval, "poll_interval")
        self.channel = self.schema  # NOTIFY channel
        self.handlers: dict[str, Handler] = {}
        self._lock = threading.Lock()
        self._pool: Any = None
        self._apool: Any = None
        self._installed = False

    def __repr__(self) -> str:
        return f"<outlast.jobs.Jobs schema={self.schema!r} kinds={sorted(self.handlers)}>"

    # -- handlers ---------------------------------------------------------------

    def handler(
        self,
        kind: str,
        *,
        max_attempts: int | None = None,
        retry_backoff: Backoff | None = None,
    ) -> Callable[[F], F]:
        """Register a sync or async function ``fn(job)`` for jobs of `kind`.

        A handler that raises is retried after `retry_backoff` (default 1 s
        doubling to 5 min, jittered) until the job's ``max_attempts``, then
        the job becomes a dead letter (``failed``).
        """
        if not isinstance(kind, str) or not kind:
            raise ConfigurationError(f"kind must be a non-empty string, got {kind!r}")
        if retry_backoff is not None and not isinstance(retry_backoff, Backoff):
            raise ConfigurationError("retry_backoff must be an outlast.Backoff")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise ConfigurationError(f"max_attempts must be an integer >= 1, got {max_attempts!r}")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"the handler for {kind!r} must be callable")
            if kind in self.handlers:
                raise ConfigurationError(f"a handler for {kind!r} is already registered")
            self.handlers[kind] = Handler(
                kind=kind,
                fn=fn,
                is_async=inspect.iscoroutinefunction(fn),
                retry_backoff=retry_backoff or DEFAULT_RETRY_BACKOFF,
                max_attempts=max_attempts,
            )
            return fn

        return register

    # -- connections ------------------------------------------------------------

    def _need_dsn(self) -> str:
        if not self.dsn:
            raise ConfigurationError("this Jobs has no dsn: pass conn=, or create it with a dsn")
        return self.dsn

    def pool(self) -> Any:
        """The queue's own small sync pool (hardened, under its Guard), opened on first use."""
        with self._lock:
            if self._pool is None:
                import outlast.psycopg

                self._pool = outlast.psycopg.ConnectionPool(
                    self._need_dsn(),
                    guard=self.guard,
                    preset=self.preset,
                    min_size=1,
                    max_size=4,
                    open=True,
                    name=f"{self.schema}-enqueue",
                )
            return self._pool

    async def apool(self) -> Any:
        """The asyncio twin of `pool` (one per Jobs; use it from one event loop)."""
        if self._apool is None:
            import outlast.psycopg

            pool = outlast.psycopg.AsyncConnectionPool(
                self._need_dsn(),
                guard=self.guard,
                preset=self.preset,
                min_size=1,
                max_size=4,
                name=f"{self.schema}-aenqueue",
            )
            await pool.open()
            self._apool = pool
        return self._apool

    def install(self) -> int:
        """Create or upgrade the queue's tables; return the schema version.

        Idempotent and safe from many processes at once (an advisory lock
        serialises them); enqueueing and workers call it on first use.
        """
        if not self._installed:

            def run(conn: Any) -> int:
                conn.autocommit = True  # install() manages its own transaction
                try:
                    return install(conn, self.schema)
                finally:
                    conn.autocommit = False

            with self.pool().connection() as conn:
                self.guard.call(run, conn, op="jobs.install", idempotent=True)
            self._installed = True
        return SCHEMA_VERSION

    async def ainstall(self) -> int:
        """The asyncio twin of `install`."""
        if not self._installed:
            pool = await self.apool()
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                try:
                    await self.guard.acall(
                        ainstall, conn, self.schema, op="jobs.install", idempotent=True
                    )
                finally:
                    await conn.set_autocommit(False)
            self._installed = True
        return SCHEMA_VERSION

    def close(self) -> None:
        """Close the queue's own sync pool (the async one: `aclose`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    async def aclose(self) -> None:
        """Close both of the queue's own pools."""
        self.close()
        pool, self._apool = self._apool, None
        if pool is not None:
            await pool.close()

    # -- enqueueing -------------------------------------------------------------

    def _rows(self, items: Iterable[NewJob | Mapping[str, Any]]) -> list[list[Any]]:
        rows = []
        for item in items:
            job = item if isinstance(item, NewJob) else NewJob(**dict(item))
            rows.append(enqueue_params(job, self._attempts_for(job.kind)))
        return rows

    def _attempts_for(self, kind: Any) -> int:
        handler = self.handlers.get(kind) if isinstance(kind, str) else None
        if handler is not None and handler.max_attempts is not None:
            return handler.max_attempts
        return self.max_attempts

    def _statement(self, rows: Sequence[list[Any]]) -> tuple[Callable[[str], str], list[Any]]:
        params = [value for row in rows for value in row]
        params.append(self.channel)
        n = len(rows)
        return (lambda style: enqueue_sql(self.schema, n, placeholder=style)), params

    @staticmethod
    def _ids(rows: Sequence[list[Any]], answer: Sequence[tuple[Any, ...]]) -> list[int | None]:
        # Rows come back in the order given, minus those a dedupe key turned away.
        out: list[int | None] = []
        j = 0
        for row in rows:
            if j < len(answer) and answer[j][1] == row[0] and answer[j][2] == row[7]:
                out.append(int(answer[j][0]))
                j += 1
            else:
                out.append(None)
        return out

    def enqueue(
        self,
        kind: str,
        payload: Any = None,
        *,
        key: str | int | None = None,
        run_at: datetime.datetime | Seconds | None = None,
        priority: int = 0,
        dedupe: str | None = None,
        max_attempts: int | None = None,
        conn: Any = None,
    ) -> int | None:
        """Add one job; return its id, or None when a live job has the same `dedupe` key.

        `payload` is anything JSON can hold. `key` groups jobs under the
        kind's per-key limit (a business id). `run_at` is an aware datetime or
        a delay in seconds. Higher `priority` runs first. `conn`: the caller's
        own connection (psycopg, psycopg2, Django or SQLAlchemy): the job is
        written in the caller's transaction and exists only if it commits.
        """
        job = NewJob(kind, payload, key, run_at, priority, dedupe, max_attempts)
        return self.enqueue_many([job], conn=conn)[0]

    def enqueue_many(
        self, jobs: Iterable[NewJob | Mapping[str, Any]], *, conn: Any = None
    ) -> list[int | None]:
        """Add many jobs in one statement per thousand; ids in order (None: deduplicated)."""
        rows = self._rows(jobs)
        out: list[int | None] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql_for, params = self._statement(chunk)
            if conn is not None:
                answer = run_on(conn, sql_for, params)
            else:
                self.install()

                def insert(c: Any, sql: str = sql_for("%s"), p: list[Any] = params) -> Any:
                    return c.execute(sql, p).fetchall()

                answer = self.guard.transaction(self.pool(), insert, op="jobs.enqueue")
            out.extend(self._ids(chunk, answer))
        return out

    async def aenqueue(
        self,
        kind: str,
        payload: Any = None,
        *,
        key: str | int | None = None,
        run_at: datetime.datetime | Seconds | None = None,
        priority: int = 0,
        dedupe: str | None = None,
        max_attempts: int | None = None,
        conn: Any = None,
    ) -> int | None:
        """The asyncio twin of `enqueue` (``conn``: psycopg AsyncConnection, asyncpg, SQLAlchemy
        AsyncConnection or AsyncSession)."""
        job = NewJob(kind, payload, key, run_at, priority, dedupe, max_attempts)
        return (await self.aenqueue_many([job], conn=conn))[0]

    async def aenqueue_many(
        self, jobs: Iterable[NewJob | Mapping[str, Any]], *, conn: Any = None
    ) -> list[int | None]:
        """The asyncio twin of `enqueue_many`."""
        rows = self._rows(jobs)
        out: list[int | None] = []
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            sql_for, params = self._statement(chunk)
            if conn is not None:
                answer = await arun_on(conn, sql_for, params)
            else:
                await self.ainstall()

                async def insert(c: Any, sql: str = sql_for("%s"), p: list[Any] = params) -> Any:
                    cur = await c.execute(sql, p)
                    return await cur.fetchall()

                answer = await self.guard.atransaction(
                    await self.apool(), insert, op="jobs.enqueue"
                )
            out.extend(self._ids(chunk, answer))
        return out

    # -- managing jobs ----------------------------------------------------------

    def _cancel_sql(self) -> str:
        s = self.schema
        return f"""
WITH target AS (SELECT id, state, kind, key, slot FROM {s}.jobs
                WHERE id = %s AND state IN ('queued', 'running') FOR UPDATE),
queued AS (
    UPDATE {s}.jobs j SET state = 'cancelled', finished_at = now(), last_error = 'cancelled'
    FROM target t WHERE j.id = t.id AND t.state = 'queued' RETURNING j.id
),
flagged AS (
    UPDATE {s}.jobs j SET cancel_requested = true
    FROM target t WHERE j.id = t.id AND t.state = 'running' RETURNING j.id
)
SELECT (SELECT count(*) FROM queued), (SELECT count(*) FROM flagged)
"""

    def _requeue_sql(self) -> str:
        return f"""
UPDATE {self.schema}.jobs
SET state = 'queued', run_at = now(), max_attempts = attempts + %s, finished_at = NULL,
    cancel_requested = false
WHERE id = %s AND state IN ('failed', 'cancelled')
RETURNING id
"""

    @staticmethod
    def _cancel_answer(row: Any) -> str | None:
        if row is None:
            return None
        return "cancelled" if row[0] else "requested" if row[1] else None

    def cancel(self, job_id: int, *, conn: Any = None) -> str | None:
        """Cancel a job: ``"cancelled"`` (it was waiting and never runs), ``"requested"``
        (it is running: its handler sees ``job.cancelled``; an ``async def`` handler is
        cancelled at the worker's next heartbeat), or None (finished or unknown)."""
        sql = self._cancel_sql()
        if conn is not None:
            return self._cancel_answer(run_on(conn, lambda _: sql, [job_id])[0])

        def run(c: Any) -> Any:
            return c.execute(sql, [job_id]).fetchone()

        self.install()
        return self._cancel_answer(self.guard.transaction(self.pool(), run, op="jobs.cancel"))

    async def acancel(self, job_id: int, *, conn: Any = None) -> str | None:
        """The asyncio twin of `cancel`."""
        sql = self._cancel_sql()
        if conn is not None:
            return self._cancel_answer((await arun_on(conn, lambda _: sql, [job_id]))[0])

        async def run(c: Any) -> Any:
            return await (await c.execute(sql, [job_id])).fetchone()

        await self.ainstall()
        answer = await self.guard.atransaction(await self.apool(), run, op="jobs.cancel")
        return self._cancel_answer(answer)

    def requeue(self, job_id: int, *, attempts: int | None = None) -> bool:
        """Put a dead letter (or a cancelled job) back in the queue with `attempts` more tries.

        Returns False when the job is not failed or cancelled. A dedupe key
        that meanwhile has a live job makes this raise (unique violation).
        """
        more = self.max_attempts if attempts is None else attempts
        if isinstance(more, bool) or not isinstance(more, int) or more < 1:
            raise ConfigurationError(f"attempts must be an integer >= 1, got {more!r}")
        sql = self._requeue_sql()

        def run(c: Any) -> Any:
            return c.execute(sql, [more, job_id]).fetchone()

        self.install()
        return self.guard.transaction(self.pool(), run, op="jobs.requeue") is not None

    def status(self) -> Any:
        """A `QueueStatus` snapshot read on the queue's own pool."""
        from ._status import status

        self.install()
        with self.pool().connection() as conn:
            return self.guard.call(status, conn, schema=self.schema, idempotent=True)

    # -- workers ----------------------------------------------------------------

    def worker(self, *, concurrency: int = 10, **options: Any) -> Any:
        """A `Worker` for this queue's handlers (see `outlast.jobs.Worker`)."""
        from ._worker import Worker

        return Worker(self, concurrency=concurrency, **options)
