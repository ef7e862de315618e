"""`Worker`: runs a queue's handlers, rides out outages, never leaks a slot.

One asyncio event loop per worker process, three supervised tasks
(`outlast.supervise.AsyncSupervisor`), each on its own hardened connection:

- **dispatch** settles finished attempts and claims new ones, one statement
  each (batched), then waits for a NOTIFY, a finished handler or the poll
  interval. A database fault is reported to the Guard (which logs
  ``[DB_DOWN]`` / ``[DB_RECOVERED]``) and retried on a short backoff, so the
  worker resumes within a second of the database returning; it never exits.
  After a reconnect, rows this worker claimed but never heard back about are
  put back at once (`forget_sql`).
- **heartbeat** (an `outlast.loop`) pushes the leases of every attempt still
  held, every third of a lease, and hands cancellations to running handlers.
- **listen** keeps a LISTEN connection, reconnects after any outage (and says
  so in `health()`), and pings it so a dead link is noticed.

Handlers run as asyncio tasks (``async def``) or on daemon threads (``def``).
A graceful stop claims nothing more, waits `shutdown_timeout` for running
handlers, releases the rest back to the queue, settles, and returns. SIGKILL
leaves only leases, which the next claim after their expiry takes over.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import random
import signal
import time
from typing import Any, Protocol

import outlast
import outlast.psycopg
from outlast import ConfigurationError, DatabaseUnavailable, redact
from outlast.supervise import AsyncSupervisor, AsyncTaskContext

from ._model import Cancelled, Handler, Job, as_seconds, worker_id
from ._schema import ainstall
from ._sql import claim_sql, forget_sql, heartbeat_sql, settle_sql
from ._threads import HandlerThreads

__all__ = ["Queue", "Worker"]


class Queue(Protocol):
    """What a worker needs of its queue (an `outlast.jobs.Jobs`, which builds workers).

    A protocol rather than an import: `Jobs.worker()` makes workers, so the
    worker must not import `Jobs` back.
    """

    dsn: str | None
    schema: str
    channel: str
    limits: dict[str, int]
    lease: float
    keep_done: bool
    listen: bool
    poll_interval: float
    guard: outlast.Guard
    hardening: outlast.Hardening
    handlers: dict[str, Handler]

    def _need_dsn(self) -> str: ...


logger = logging.getLogger("outlast.jobs")

#: Longest a settle/claim statement may take on the worker's connections: a
#: blackholed link is given up after this, not after the application's timeout.
_STATEMENT_TIMEOUT = 10.0
#: How often the LISTEN connection is pinged between notifications.
_LISTEN_PING = 5.0


class _Attempt:
    """One claimed attempt, from the claim until its outcome is settled."""

    __slots__ = ("delay", "error", "job", "outcome", "reason", "settling", "task")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.task: asyncio.Task[None] | None = None
        self.outcome: str | None = None  # done / retry / failed / cancelled / release
        self.delay = 0.0
        self.error: str | None = None
        self.reason = ""
        self.settling = False


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = redact(text)[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _s(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") or "0"


class Worker:
    """Runs the handlers of a `Jobs` queue (``jobs.worker(concurrency=8)``).

    `concurrency` is how many jobs run at once in this process; `kinds`
    restricts the worker to some of the registered kinds; `shutdown_timeout`
    is how long a graceful stop waits for running handlers before releasing
    their jobs; `name` prefixes the supervised tasks. `run()` blocks (SIGTERM
    and SIGINT stop it gracefully); ``await arun()`` runs inside a loop.
    """

    def __init__(
        self,
        jobs: Queue,
        *,
        concurrency: int = 10,
        kinds: list[str] | None = None,
        shutdown_timeout: float | datetime.timedelta = 30.0,
        name: str = "jobs",
    ) -> None:
        if not isinstance(getattr(jobs, "handlers", None), dict) or not hasattr(jobs, "_need_dsn"):
            raise ConfigurationError(f"jobs must be an outlast.jobs.Jobs, got {jobs!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        chosen = sorted(jobs.handlers) if kinds is None else list(kinds)
        unknown = [k for k in chosen if k not in jobs.handlers]
        if unknown:
            raise ConfigurationError(f"no handler registered for kind(s): {', '.join(unknown)}")
        if not chosen:
            raise ConfigurationError("no handlers registered: use @jobs.handler(kind) first")
        jobs._need_dsn()
        self.jobs = jobs
        self.concurrency = concurrency
        self.kinds = chosen
        self.shutdown_timeout = as_seconds(shutdown_timeout, "shutdown_timeout", allow_zero=True)
        self.name = name
        self.id = worker_id()
        self.guard = jobs.guard
        s = jobs.schema
        self._claim_sql = claim_sql(s)
        self._settle_sql = settle_sql(s, keep_done=jobs.keep_done)
        self._heartbeat_sql = heartbeat_sql(s)
        self._forget_sql = forget_sql(s)
        base = jobs.hardening
        timeout = min(base.statement_timeout or _STATEMENT_TIMEOUT, _STATEMENT_TIMEOUT)
        self._hardening = base.replace(
            statement_timeout=timeout, deadline_grace=min(base.deadline_grace, 1.0)
        )
        self._prepare = self._hardening.prepared_statements
        self._limits = json.dumps(jobs.limits)
        self._held: dict[int, _Attempt] = {}
        self._busy = 0
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sup: AsyncSupervisor | None = None
        self._threads: HandlerThreads | None = None
        self._listen_state = "off" if not jobs.listen else "starting"
        self._listen_lost_at: float | None = None
        self._conns: dict[str, Any] = {}
        self._down_since: float | None = None
        self._failures = 0
        self.claimed = 0
        self.completed = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"<outlast.jobs.Worker {self.id} concurrency={self.concurrency}>"

    # -- running ----------------------------------------------------------------

    def run(self, *, handle_signals: bool = True) -> None:
        """Run until `stop()` or SIGTERM/SIGINT (when `handle_signals`); blocks."""
        asyncio.run(self.arun(handle_signals=handle_signals))

    async def arun(self, *, handle_signals: bool = False) -> None:
        """Run in the current event loop until `stop()` (or a signal when `handle_signals`)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        if any(not self.jobs.handlers[k].is_async for k in self.kinds):
            self._threads = HandlerThreads(self.concurrency, f"{self.name}-handler")
        await self._install()
        logger.info(
            "[WORKER_STARTED] worker=%s kinds=%s concurrency=%d limits=%s listen=%s",
            self.id,
            ",".join(self.kinds),
            self.concurrency,
            self._limits,
            self.jobs.listen,
            extra={"outlast_event": "worker_started", "worker": self.id},
        )
        sup = AsyncSupervisor(self.name, backoff=outlast.Backoff(initial=0.1, cap=1.0))
        self._sup = sup
        heartbeat = outlast.loop(
            every=self.jobs.lease / 3, guard=self.guard, name=f"{self.name}-heartbeat"
        )(self._heartbeat)
        try:
            async with sup:
                sup.start(f"{self.name}-dispatch", self._dispatch, restart="on_failure")
                heartbeat.start(sup)
                if self.jobs.listen:
                    sup.start(f"{self.name}-listen", self._listen, restart="on_failure")
                await self._stop_requested.wait()
                await self._drain()
                await sup.stop(timeout=5.0)
        finally:
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await self._close_all()
            if self._threads is not None:
                self._threads.close()
            logger.info(
                "[WORKER_STOPPED] worker=%s completed=%d failed=%d unsettled=%d",
                self.id,
                self.completed,
                self.failed,
                len(self._held),
                extra={"outlast_event": "worker_stopped", "worker": self.id},
            )

    def _on_signal(self, signum: int) -> None:
        if self._stopping:
            logger.warning("[WORKER_STOP] second signal: releasing running jobs now")
            self.shutdown_timeout = 0.0
        logger.info("[WORKER_STOP] signal=%s draining", signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        """Ask the worker to stop gracefully (safe from any thread or a signal handler)."""
        loop, event = self._loop, self._stop_requested
        if loop is None or event is None:
            return
        if loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._begin_stop)
        except RuntimeError:  # the loop already finished
            pass

    def _halting(self) -> bool:
        return self._stopping  # a call: mypy must not assume it unchanged across awaits

    def _begin_stop(self) -> None:
        self._stopping = True
        assert self._stop_requested is not None and self._wake is not None
        self._stop_requested.set()
        self._wake.set()

    async def _drain(self) -> None:
        """Wait for running handlers, release what is left, settle everything."""
        began = time.monotonic()
        # Re-read the timeout each time: a second signal sets it to 0.
        while time.monotonic() - began < self.shutdown_timeout and any(
            a.task is not None and not a.task.done() for a in self._held.values()
        ):
            await asyncio.sleep(0.05)
        for attempt in list(self._held.values()):
            if attempt.outcome is None:
                attempt.outcome, attempt.delay, attempt.reason = "release", 0.0, "shutdown"
                if attempt.task is not None:
                    attempt.task.cancel()
        # The dispatcher settles what is pending, then returns (stopping, nothing held).
        assert self._wake is not None
        self._wake.set()
        deadline = time.monotonic() + max(5.0, self.shutdown_timeout)
        while self._held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- connections --------------------------------------------------------------

    async def _connect(self, role: str) -> Any:
        conn = self._conns.get(role)
        if conn is not None and not conn.closed:
            return conn
        conn = await outlast.psycopg.aconnect(
            self.jobs.dsn or "",
            guard=self.guard,
            preset=self._hardening,
            autocommit=True,
            application_name=f"outlast-{role}",
        )
        if role == "dispatch" and self._prepare:
            # The claim must walk the ready index in order and stop after a few
            # rows. On a table not yet analysed (a backlog just written) the
            # planner expects a handful of rows and reads every waiting job
            # through a bitmap scan and a sort instead: 10x slower at 10k jobs.
            # This connection runs only the queue's own statements; behind a
            # transaction pooler (no session state) it is left to the statistics.
            await conn.execute("SET enable_bitmapscan = off")
        self._conns[role] = conn
        return conn

    async def _drop(self, role: str) -> None:
        conn = self._conns.pop(role, None)
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                logger.debug("closing the %s connection failed", role, exc_info=True)

    async def _close_all(self) -> None:
        for role in list(self._conns):
            await self._drop(role)

    async def _install(self) -> None:
        """Create or upgrade the schema, riding out an outage at start-up too."""
        attempt = 0
        while not self._halting():  # a stop while the database is down at start-up
            try:
                conn = await self._connect("dispatch")
                await ainstall(conn, self.jobs.schema)
                return
            except Exception as exc:
                attempt += 1
                await self._drop("dispatch")
                delay = self._fault_delay(exc, "jobs.install", attempt)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    def _fault_delay(self, exc: BaseException, op: str, attempt: int) -> float | None:
        """The wait before retrying after `exc`, or None when it is not a database fault."""
        if isinstance(exc, DatabaseUnavailable):
            fault = exc.fault
            retry_after = exc.retry_after or 0.0
        else:
            fault = self.guard.record_failure(exc, op=op)
            if fault is None:
                return None
            retry_after = 0.0
        if self._down_since is None:
            self._down_since = time.monotonic()
            logger.warning(
                "[WORKER_PAUSED] worker=%s op=%s reason=%s held=%d",
                self.id,
                op,
                fault.reason if fault is not None else type(exc).__name__,
                len(self._held),
                extra={"outlast_event": "worker_paused", "worker": self.id, "op": op},
            )
        return max(self.guard.retry.backoff.delay(attempt, random.random()), retry_after)

    def _resumed(self) -> None:
        if self._down_since is None:
            return
        downtime = time.monotonic() - self._down_since
        self._down_since = None
        logger.warning(
            "[WORKER_RESUMED] worker=%s downtime=%ss held=%d",
            self.id,
            _s(downtime),
            len(self._held),
            extra={"outlast_event": "worker_resumed", "worker": self.id, "downtime": downtime},
        )

    # -- dispatch -------------------------------------------------------------------

    async def _dispatch(self, ctx: AsyncTaskContext) -> None:
        assert self._wake is not None
        attempt = 0
        fresh = True  # a new connection: put back claims whose answer was lost
        while not (self._stopping and not self._held):
            self._wake.clear()
            claimed, more = 0, False
            try:
                conn = await self._connect("dispatch")
                if fresh:
                    await self._forget(conn)
                    fresh = False
                if self._pending():
                    await self._settle(conn)
                if not self._stopping:
                    claimed, more = await self._claim(conn)
                self.guard.record_success(op="jobs.dispatch")
                attempt = 0
                self._resumed()
            except Exception as exc:
                attempt += 1
                await self._drop("dispatch")
                fresh = True
                delay = self._fault_delay(exc, "jobs.dispatch", attempt)
                if delay is None:
                    raise  # a bug: the supervisor logs it and restarts this task
                await asyncio.sleep(delay)
                continue
            ctx.beat()
            if self._pending():
                continue
            if more and self._busy < self.concurrency:
                if claimed:
                    continue
                timeout = 0.01  # the window was taken by other workers: let them commit
            else:
                timeout = self.jobs.poll_interval
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _pending(self) -> list[_Attempt]:
        return [a for a in self._held.values() if a.outcome is not None]

    async def _forget(self, conn: Any) -> None:
        cur = await conn.execute(
            self._forget_sql, {"worker": self.id, "known": list(self._held)}, prepare=self._prepare
        )
        row = await cur.fetchone()
        if row and row[0]:
            logger.warning(
                "[WORKER_RELEASE_SLOT] worker=%s jobs=%d reason=claim_answer_lost",
                self.id,
                row[0],
                extra={"outlast_event": "worker_forgot", "worker": self.id, "jobs": row[0]},
            )

    async def _settle(self, conn: Any) -> None:
        batch = self._pending()
        for a in batch:
            a.settling = True
        params = {
            "ids": [a.job.id for a in batch],
            "attempts": [a.job.attempt for a in batch],
            "outcomes": [a.outcome for a in batch],
            "delays": [a.delay for a in batch],
            "errors": [a.error for a in batch],
            "worker": self.id,
            "channel": self.jobs.channel,
        }
        try:
            cur = await conn.execute(self._settle_sql, params, prepare=self._prepare)
            rows = await cur.fetchall()
        except BaseException:
            for a in batch:
                a.settling = False
            raise
        freed = {row[0]: row[1] for row in rows}
        info = logger.isEnabledFor(logging.INFO)
        for a in batch:
            self._held.pop(a.job.id, None)
            job = a.job
            if a.outcome == "done":
                self.completed += 1
            elif a.outcome == "failed":
                self.failed += 1
            if job.id not in freed:
                # Settled by an earlier try whose answer was lost, or this attempt
                # lost its lease and another worker took the job over.
                logger.debug("settle of job %s attempt %s matched nothing", job.id, job.attempt)
                continue
            if info and freed[job.id] is not None:
                logger.info(
                    "[WORKER_RELEASE_SLOT] job=%s job_type=%s key=%s slot=%s reason=%s",
                    job.id,
                    job.kind,
                    job.key,
                    freed[job.id],
                    a.reason or a.outcome,
                    extra={"outlast_event": "slot_released", "job": job.id, "key": job.key},
                )

    async def _claim(self, conn: Any) -> tuple[int, bool]:
        """Claim up to the free capacity; return (claimed, more may be waiting)."""
        capacity = self.concurrency - self._busy
        if capacity <= 0:
            return 0, False
        scan = max(2 * capacity, 32)
        cur = await conn.execute(
            self._claim_sql,
            {
                "worker": self.id,
                "lease": self.jobs.lease,
                "kinds": self.kinds,
                "limits": self._limits,
                "capacity": capacity,
                "scan": scan,
            },
            prepare=self._prepare,
        )
        rows = await cur.fetchall()
        scanned, buried = rows[0][11], rows[0][12]
        if buried:
            logger.warning(
                "[WORKER_JOB_FAILED] jobs=%d reason=lease_expired_on_last_attempt dead_letter",
                buried,
                extra={"outlast_event": "job_failed", "jobs": buried, "dead": True},
            )
        loop = asyncio.get_running_loop()
        claimed = 0
        for row in rows:
            if row[0] is None:
                continue
            job = Job(
                id=row[0],
                kind=row[1],
                key=row[2],
                payload=row[3],
                attempt=row[4],
                max_attempts=row[5],
                slot=row[6],
                priority=row[7],
                created_at=row[8],
                reclaimed=bool(row[9]),
                previous_worker=row[10],
            )
            attempt = _Attempt(job)
            self._held[job.id] = attempt
            self._busy += 1
            claimed += 1
            attempt.task = loop.create_task(self._execute(attempt), name=f"job-{job.id}")
        self.claimed += claimed
        # A full scan window means more jobs may be waiting behind it.
        return claimed, claimed >= capacity or scanned >= scan

    # -- one job --------------------------------------------------------------------

    async def _execute(self, attempt: _Attempt) -> None:
        job = attempt.job
        handler = self.jobs.handlers[job.kind]
        if logger.isEnabledFor(logging.INFO):
            self._log_picked(job)
        try:
            if handler.is_async:
                await handler.fn(job)
            else:
                assert self._threads is not None
                await self._threads.run(handler.fn, job)
            outcome, delay, error, reason = "done", 0.0, None, "success"
        except asyncio.CancelledError:
            if attempt.outcome == "release":  # shutdown
                self._finished(attempt)
                raise
            outcome, delay, error, reason = "cancelled", 0.0, "cancelled", "cancelled"
        except Cancelled:
            outcome, delay, error, reason = "cancelled", 0.0, "cancelled", "cancelled"
        except Exception as exc:
            outcome, delay, error, reason = self._failure(job, handler.retry_backoff, exc)
        if attempt.outcome is None:  # not already released by a shutdown
            attempt.outcome, attempt.delay, attempt.error = outcome, delay, error
            attempt.reason = reason
        self._finished(attempt)

    def _finished(self, attempt: _Attempt) -> None:
        self._busy -= 1
        attempt.task = None
        if self._wake is not None:
            self._wake.set()

    def _failure(
        self, job: Job, backoff: outlast.Backoff, exc: Exception
    ) -> tuple[str, float, str, str]:
        error = _describe(exc)
        last = job.attempt >= job.max_attempts
        delay = 0.0 if last else backoff.delay(job.attempt, random.random())
        logger.warning(
            "[WORKER_JOB_FAILED] job=%s job_type=%s key=%s attempt=%d/%d %s err=%s",
            job.id,
            job.kind,
            job.key,
            job.attempt,
            job.max_attempts,
            "dead_letter" if last else f"retry_in={_s(delay)}s",
            error,
            extra={
                "outlast_event": "job_failed",
                "job": job.id,
                "job_type": job.kind,
                "attempt": job.attempt,
                "dead": last,
            },
        )
        logger.debug("job %s traceback", job.id, exc_info=exc)
        if last:
            return "failed", 0.0, error, "failed"
        return "retry", delay, error, "retry"

    def _log_picked(self, job: Job) -> None:
        logger.info(
            "[WORKER_PICKED] job_type=%s job=%s key=%s attempt=%d%s",
            job.kind,
            job.id,
            job.key,
            job.attempt,
            f" reclaimed_from={job.previous_worker}" if job.reclaimed else "",
            extra={"outlast_event": "job_picked", "job": job.id, "job_type": job.kind},
        )
        if job.slot is not None:
            logger.info(
                "[WORKER_SLOT_ACQUIRED] job=%s job_type=%s key=%s slot=%s",
                job.id,
                job.kind,
                job.key,
                job.slot,
                extra={"outlast_event": "slot_acquired", "job": job.id, "key": job.key},
            )

    # -- heartbeat ------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        held = [a for a in self._held.values() if not a.settling]
        if not held:
            return
        try:
            conn = await self._connect("heartbeat")
            cur = await conn.execute(
                self._heartbeat_sql,
                {
                    "lease": self.jobs.lease,
                    "ids": [a.job.id for a in held],
                    "attempts": [a.job.attempt for a in held],
                    "worker": self.id,
                },
                prepare=self._prepare,
            )
            rows = await cur.fetchall()
        except BaseException:
            await self._drop("heartbeat")
            raise
        alive = {row[0]: row[1] for row in rows}
        for a in held:
            job = a.job
            if self._held.get(job.id) is not a or a.settling:
                continue  # settled meanwhile
            if job.id not in alive:
                if a.outcome is None:
                    self._lost(a)
                # else: finished, and settled by a try whose answer was lost (or taken
                # over after it ended): the next settle matches nothing; nothing re-runs.
            elif alive[job.id] and not job.cancelled:
                job._cancel.set()
                if a.task is not None and self.jobs.handlers[job.kind].is_async:
                    a.task.cancel()

    def _lost(self, attempt: _Attempt) -> None:
        job = attempt.job
        logger.error(
            "[WORKER_LEASE_LOST] job=%s job_type=%s key=%s attempt=%d: the lease expired and "
            "another worker took the job over (this worker could not heartbeat in time)",
            job.id,
            job.kind,
            job.key,
            job.attempt,
            extra={"outlast_event": "lease_lost", "job": job.id},
        )
        # Nothing to settle: the attempt no longer holds the job or its slot.
        self._held.pop(job.id, None)
        if attempt.task is not None and self.jobs.handlers[job.kind].is_async:
            attempt.outcome = "release"
            attempt.task.cancel()

    # -- listen ---------------------------------------------------------------------

    async def _listen(self, ctx: AsyncTaskContext) -> None:
        assert self._wake is not None
        attempt = 0
        quoted = '"' + self.jobs.channel.replace('"', '""') + '"'
        while not self._stopping:
            try:
                conn = await self._connect("listen")
                await conn.execute(f"LISTEN {quoted}")
                if self._listen_lost_at is not None:
                    logger.warning(
                        "[WORKER_LISTEN_RESTORED] worker=%s after=%ss",
                        self.id,
                        _s(time.monotonic() - self._listen_lost_at),
                        extra={"outlast_event": "listen_restored", "worker": self.id},
                    )
                self._listen_state, self._listen_lost_at, attempt = "listening", None, 0
                self._wake.set()  # catch up on whatever was missed
                while not self._stopping:
                    async for _ in conn.notifies(timeout=_LISTEN_PING):
                        self._wake.set()
                    ctx.beat()
                    await conn.execute("SELECT 1")
            except Exception as exc:
                await self._drop("listen")
                if self._halting():
                    return
                attempt += 1
                if self._listen_lost_at is None:
                    self._listen_lost_at = time.monotonic()
                    self._listen_state = "reconnecting"
                    logger.warning(
                        "[WORKER_LISTEN_LOST] worker=%s err=%s (polling every %ss meanwhile)",
                        self.id,
                        _describe(exc),
                        _s(self.jobs.poll_interval),
                        extra={"outlast_event": "listen_lost", "worker": self.id},
                    )
                await ctx.sleep(self.guard.retry.backoff.delay(attempt, random.random()))
        await self._drop("listen")

    # -- health ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """A supervisor-shaped health document (pass ``supervisor=worker`` to the web integrations).

        ``warn`` while the database is unreachable or the LISTEN connection is
        being re-established (jobs are still found by polling); ``fail`` when a
        supervised task failed for good.
        """
        doc: dict[str, Any] = (
            self._sup.health() if self._sup is not None else {"status": "warn", "tasks": {}}
        )
        status = doc.get("status", "pass")
        if status == "pass" and (
            self._down_since is not None
            or self._listen_state
            not in (
                "listening",
                "off",
            )
        ):
            status = "warn"
        doc["status"] = status
        doc["worker"] = {
            "id": self.id,
            "kinds": self.kinds,
            "concurrency": self.concurrency,
            "running": self._busy,
            "held": len(self._held),
            "claimed": self.claimed,
            "completed": self.completed,
            "failed": self.failed,
            "database": "down" if self._down_since is not None else "up",
            "listen": self._listen_state,
            "stopping": self._stopping,
        }
        return doc
