"""Whole-transaction retries that survive a lost COMMIT (driver-agnostic core).

``Guard.transaction(source, fn)`` runs ``fn(connection)`` inside a transaction
and commits it. What happens on a database fault depends on *when* it struck:

- before COMMIT was sent (connect, a statement, reading the xid): the server
  rolled the transaction back, so an UNAVAILABLE, CONFLICT or READ_ONLY fault
  re-runs the *whole* function on a fresh connection, within the Guard's
  attempts and deadline (or the call's own ``deadline=``, e.g. the rest of a
  web request's budget);
- while COMMIT was in flight (the connection died before the reply): nobody
  knows whether it committed. Just before COMMIT the transaction's id was read
  (``pg_current_xact_id_if_assigned()``). After reconnecting, outlast asks
  ``pg_xact_status(xid)``:

  ===============  ==========================================================
  ``committed``    return fn's result; fn is *not* run again
  ``aborted``      re-run the whole function (nothing was written)
  ``in progress``  the server is still finishing it: wait, ask again
  unreachable      back off and ask again, within the deadline
  still unknown    raise `CommitOutcomeUnknown` (with the xid) at the deadline
  ===============  ==========================================================

  A transaction that wrote nothing has no xid (the function returns NULL and
  assigns none, so read-only work burns no xid); its lost COMMIT changed
  nothing, so its result is returned as is. A COMMIT is never blindly re-sent.

The server's start time is read with the xid. If the answer comes from a
server that restarted (a crash, a failover), a ``committed`` answer is not
trusted: after a crash PostgreSQL may hand out again an xid whose WAL never
reached disk, so the status could belong to another transaction. outlast then
raises `CommitOutcomeUnknown` rather than guess. ``aborted`` and "not yet
assigned" answers remain trustworthy (an xid that was reused never committed).

Structure: the decisions live in one pure generator (`_decide`) that yields
commands (run an attempt, sleep, ask the status) and receives their results;
`run_transaction` and `arun_transaction` are thin sync/async shells that carry
the commands out, so the two can never diverge. Drivers plug in through a
small adapter protocol; integrations register theirs with `register_adapter`
and are imported lazily, by name, when a source of theirs shows up.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

from ._backoff import Retry
from ._classify import classify
from ._clock import SYSTEM_CLOCK, Clock
from ._errors import CommitOutcomeUnknown, DatabaseUnavailable
from ._fault import Fault, FaultKind
from ._web_budget import CommitWatch

__all__ = [
    "MARKER_SQL",
    "AsyncTransactionAdapter",
    "StatusReply",
    "TransactionAdapter",
    "arun_transaction",
    "find_adapter",
    "register_adapter",
    "run_transaction",
    "status_sql",
]

T = TypeVar("T")

MARKER_SQL = "SELECT pg_current_xact_id_if_assigned()::text, pg_postmaster_start_time()::text"
"""Read before COMMIT: the transaction's xid (NULL if it wrote nothing) and the
server's start time (to notice a restart between COMMIT and the question)."""


def status_sql(placeholder: str) -> str:
    """The resolution query, with the driver's placeholder for the xid (text).

    ``pg_current_xact_id()`` assigns this session a fresh xid, so an xid that
    is not below it was never handed out: the server restarted without it
    (its WAL never reached disk) and the transaction cannot have committed.
    Asking ``pg_xact_status`` about such an xid would be an error.
    """
    return (
        "SELECT CASE WHEN q.x < pg_current_xact_id() THEN pg_xact_status(q.x)"
        " ELSE 'unassigned' END, pg_postmaster_start_time()::text"
        f" FROM (SELECT CAST(CAST({placeholder} AS text) AS xid8) AS x) AS q"
    )


@dataclass(frozen=True, slots=True)
class StatusReply:
    """What the resolution query returned.

    `status` is ``"committed"``, ``"aborted"``, ``"in progress"``,
    ``"unassigned"`` (the xid was never handed out) or None (the xid is too old
    for the server to remember); `started` is ``pg_postmaster_start_time()``.
    """

    status: str | None
    started: str | None


class TransactionAdapter(Protocol):
    """What `run_transaction` needs from a driver (one adapter per source).

    Handles are opaque to the core. Every method may raise the driver's own
    exceptions; the core classifies them.
    """

    def open(self) -> Any:
        """Check out or open a connection (or session) and return a handle."""
        ...

    def begin(self, handle: Any) -> Any:
        """Start a transaction; return what the user function receives."""
        ...

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        """Run `MARKER_SQL` inside the transaction: (xid or None, server start)."""
        ...

    def commit(self, handle: Any) -> None: ...

    def rollback(self, handle: Any) -> None: ...

    def close(self, handle: Any, *, discard: bool) -> None:
        """Give the connection back; ``discard=True``: it may be broken, drop it."""
        ...

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        """Ask `status_sql` on a *fresh* connection, within about `timeout` seconds."""
        ...


class AsyncTransactionAdapter(Protocol):
    """The asyncio twin of `TransactionAdapter`."""

    async def open(self) -> Any: ...

    async def begin(self, handle: Any) -> Any: ...

    async def marker(self, handle: Any) -> tuple[str | None, str | None]: ...

    async def commit(self, handle: Any) -> None: ...

    async def rollback(self, handle: Any) -> None: ...

    async def close(self, handle: Any, *, discard: bool) -> None: ...

    async def status(self, xid: str, *, timeout: float) -> StatusReply: ...


class GuardLike(Protocol):
    """The part of `outlast.Guard` that transactions use."""

    @property
    def name(self) -> str: ...

    @property
    def retry(self) -> Retry: ...

    def check(self) -> None: ...

    def record_failure(self, exc: BaseException, *, op: str | None = None) -> Fault | None: ...

    def record_success(self, *, op: str | None = None) -> None: ...


# --------------------------------------------------------------------------
# The pure decision logic
# --------------------------------------------------------------------------

Stage = Literal["connect", "work", "commit", "done"]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How one attempt ended (built by the shells)."""

    stage: Stage
    value: object = None
    error: Exception | None = None
    xid: str | None = None
    started: str | None = None


@dataclass(frozen=True, slots=True)
class _Attempt:
    """Command: run fn once in a transaction; reply with an `_Outcome`."""


@dataclass(frozen=True, slots=True)
class _Sleep:
    """Command: sleep through the guard's clock; reply with None.

    `resolving`: between two questions about a lost COMMIT (its outcome is
    still unknown), as opposed to before a retry.
    """

    seconds: float
    resolving: bool = False


@dataclass(frozen=True, slots=True)
class _Ask:
    """Command: ask the xid's status; reply with a `StatusReply` or the exception."""

    xid: str
    timeout: float


_Command = _Attempt | _Sleep | _Ask
_ATTEMPT = _Attempt()

# Faults that, when raised by COMMIT itself, leave the outcome unknown. A
# CONFLICT or PERMANENT error *answered* by the server (a deferred constraint,
# a serialization failure at commit) means it rolled back.
_UNKNOWN_AT_COMMIT = frozenset(
    {FaultKind.COMMIT_UNKNOWN, FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.TIMEOUT}
)
_RETRIED_WHOLE = frozenset(
    {FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.CONFLICT, FaultKind.COMMIT_UNKNOWN}
)
# A probe never waits less than this for its connection (libpq counts whole seconds).
_MIN_PROBE_TIMEOUT = 2.0
_NO_DEADLINE_PROBE_TIMEOUT = 10.0


def _decide(
    guard: GuardLike,
    op: str | None,
    now: Callable[[], float],
    rand: Callable[[], float],
    deadline: float | None = None,
) -> Generator[_Command, object, object]:
    """The whole algorithm, free of I/O. Returns fn's result or raises.

    `deadline` (seconds from the start of the call, e.g. the rest of a web
    request's budget) replaces the retry policy's deadline, which counts from
    the first failure.
    """
    policy = guard.retry
    start = None if deadline is None else now()
    if deadline is None:
        deadline = policy.deadline
    failed = 0  # attempts of fn that failed (a resolved "aborted" counts)
    # Where the deadline counts from: the call's start, else the first failure.
    first_failure: float | None = start
    while True:
        guard.check()
        outcome = yield _ATTEMPT
        assert isinstance(outcome, _Outcome)
        if outcome.error is None:
            guard.record_success(op=op)
            return outcome.value
        exc = outcome.error
        if first_failure is None:
            first_failure = now()
        reported = guard.record_failure(exc, op=op)
        if outcome.stage == "commit":
            fault = classify(exc, during_commit=True) or reported
            if fault is not None and fault.kind in _UNKNOWN_AT_COMMIT:
                if outcome.xid is None:
                    # Nothing was written: committed or not, the database is
                    # unchanged, and fn's result stands.
                    return outcome.value
                resolved = yield from _resolve(
                    guard,
                    op,
                    deadline=deadline,
                    outcome=outcome,
                    fault=fault,
                    exc=exc,
                    now=now,
                    rand=rand,
                    first_failure=first_failure,
                )
                if resolved:
                    return outcome.value
                # aborted: nothing was written; fall through to a retry
        else:
            fault = reported
        # Here the server rolled the transaction back (or a resolved COMMIT
        # was aborted): re-run the whole function if the fault allows it.
        if fault is None or fault.kind not in _RETRIED_WHOLE:
            raise exc
        failed += 1
        sleep = policy.next_sleep(failed, now() - first_failure, deadline, rand())
        if sleep is None:
            raise _give_up(guard, fault, failed, exc)
        yield _Sleep(sleep)


def _resolve(
    guard: GuardLike,
    op: str | None,
    *,
    deadline: float | None,
    outcome: _Outcome,
    fault: Fault,
    exc: Exception,
    now: Callable[[], float],
    rand: Callable[[], float],
    first_failure: float,
) -> Generator[_Command, object, bool]:
    """Find out what happened to a COMMIT: True committed, False aborted, else raise."""
    xid = outcome.xid
    assert xid is not None
    policy = guard.retry
    probes = 0
    why = "unreachable"
    last_error: BaseException = exc
    while True:
        if deadline is None:
            timeout = _NO_DEADLINE_PROBE_TIMEOUT
        else:
            timeout = max(_MIN_PROBE_TIMEOUT, deadline - (now() - first_failure))
        reply = yield _Ask(xid, timeout)
        if isinstance(reply, StatusReply):
            if reply.status == "committed":
                if outcome.started is not None and reply.started != outcome.started:
                    raise CommitOutcomeUnknown(
                        f"COMMIT outcome unknown: the server restarted before transaction"
                        f" {xid} could be checked; pg_xact_status() may describe another"
                        " transaction after a crash",
                        xid=xid,
                        fault=fault,
                    ) from exc
                guard.record_success(op=op)
                return True
            if reply.status in ("aborted", "unassigned"):
                return False
            if reply.status is None:
                raise CommitOutcomeUnknown(
                    f"COMMIT outcome unknown: the server no longer remembers transaction {xid}",
                    xid=xid,
                    fault=fault,
                ) from exc
            why = f"transaction still {reply.status}"
        elif isinstance(reply, DatabaseUnavailable):
            # The breaker (or a hardened pool obeying it) refused the status
            # question. That says nothing about the COMMIT: it is still
            # unknown, so keep asking until the deadline, then say so.
            last_error = reply
            why = "unreachable (circuit breaker open)"
        else:
            assert isinstance(reply, Exception)
            last_error = reply
            probe_fault = guard.record_failure(reply, op=op)
            if probe_fault is None:
                raise reply
            if probe_fault.kind is FaultKind.PERMANENT:
                raise CommitOutcomeUnknown(
                    f"COMMIT outcome unknown for transaction {xid}: the status query failed"
                    f" ({probe_fault.reason}); check pg_xact_status('{xid}') later",
                    xid=xid,
                    fault=fault,
                ) from reply
            why = f"unreachable ({probe_fault.reason})"
        probes += 1
        elapsed = now() - first_failure
        if deadline is None:
            sleep = policy.next_sleep(probes, elapsed, None, rand())
        else:
            delay = policy.backoff.delay(probes, rand())
            sleep = None if elapsed + delay > deadline else delay
        if sleep is None:
            raise CommitOutcomeUnknown(
                f"COMMIT outcome unknown for transaction {xid}: {why} after {probes}"
                f" check(s) in {elapsed:.1f}s; check pg_xact_status('{xid}') later",
                xid=xid,
                fault=fault,
            ) from last_error
        yield _Sleep(sleep, resolving=True)


def _give_up(guard: GuardLike, fault: Fault, failed: int, exc: Exception) -> Exception:
    if fault.kind is FaultKind.CONFLICT:
        return exc  # the database is up; the caller sees the driver's own error
    error = DatabaseUnavailable(
        f"database unavailable: transaction failed {failed} time(s), last: {fault.reason}",
        retry_after=guard.retry.backoff.cap,
        fault=fault,
        guard=guard.name,
    )
    error.__cause__ = exc
    return error


# --------------------------------------------------------------------------
# The shells
# --------------------------------------------------------------------------


def _clock(guard: GuardLike) -> Clock:
    # outlast.Guard keeps its (injectable) clock private; other guards may expose one.
    clock = getattr(guard, "_clock", None) or getattr(guard, "clock", None)
    return clock if isinstance(clock, Clock) else SYSTEM_CLOCK


def _op_name(fn: Callable[..., object], op: str | None) -> str | None:
    if op is not None:
        return op
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


@dataclass(frozen=True, slots=True)
class _Done:
    """The machine returned `value`."""

    value: object


def _next(
    machine: Generator[_Command, object, object], reply: object, watch: CommitWatch
) -> _Command | _Done:
    """The machine's next command, keeping a web request's COMMIT mark up to date.

    The mark (set by the attempt just before COMMIT) stays while the machine
    asks about the lost COMMIT or sleeps between questions, and when it gives
    up while doing so; any other step means the outcome is known.
    """
    resolving = isinstance(reply, StatusReply | Exception)  # the answer to an _Ask
    try:
        command = machine.send(reply)
    except StopIteration as stop:
        watch.settled()
        return _Done(stop.value)
    except Exception:
        if not resolving:
            watch.settled()
        raise
    if not (isinstance(command, _Ask) or (isinstance(command, _Sleep) and command.resolving)):
        watch.settled()
    return command


def run_transaction(
    guard: GuardLike,
    adapter: TransactionAdapter,
    fn: Callable[..., T],
    /,
    *args: Any,
    op: str | None = None,
    deadline: float | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(conn, *args, **kwargs)`` in a transaction with commit-unknown resolution."""
    clock = _clock(guard)
    machine = _decide(guard, _op_name(fn, op), clock.monotonic, random.random, deadline)
    watch = CommitWatch()
    reply: object = None
    while True:
        command = _next(machine, reply, watch)
        if isinstance(command, _Done):
            return cast(T, command.value)
        if isinstance(command, _Attempt):
            reply = _attempt(adapter, fn, args, kwargs, watch)
        elif isinstance(command, _Sleep):
            clock.sleep(command.seconds)
            reply = None
        else:
            try:
                reply = adapter.status(command.xid, timeout=command.timeout)
            except Exception as exc:
                reply = exc


def _attempt(
    adapter: TransactionAdapter,
    fn: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    watch: CommitWatch,
) -> _Outcome:
    try:
        handle = adapter.open()
    except Exception as exc:
        return _Outcome("connect", error=exc)
    discard = True
    try:
        try:
            target = adapter.begin(handle)
            value = fn(target, *args, **kwargs)
            xid, started = adapter.marker(handle)
        except BaseException as exc:
            try:
                adapter.rollback(handle)
                discard = False
            except Exception:
                pass
            if not isinstance(exc, Exception):
                raise
            return _Outcome("work", error=exc)
        watch.sent()
        try:
            adapter.commit(handle)
        except Exception as exc:
            return _Outcome("commit", value=value, error=exc, xid=xid, started=started)
        watch.settled()
        discard = False
        return _Outcome("done", value=value, xid=xid, started=started)
    finally:
        try:
            adapter.close(handle, discard=discard)
        except Exception:
            pass


async def arun_transaction(
    guard: GuardLike,
    adapter: AsyncTransactionAdapter,
    fn: Callable[..., Awaitable[T]],
    /,
    *args: Any,
    op: str | None = None,
    deadline: float | None = None,
    **kwargs: Any,
) -> T:
    """The asyncio twin of `run_transaction`: ``await fn(conn, *args, **kwargs)``."""
    clock = _clock(guard)
    machine = _decide(guard, _op_name(fn, op), clock.monotonic, random.random, deadline)
    watch = CommitWatch()
    reply: object = None
    while True:
        command = _next(machine, reply, watch)
        if isinstance(command, _Done):
            return cast(T, command.value)
        if isinstance(command, _Attempt):
            reply = await _aattempt(adapter, fn, args, kwargs, watch)
        elif isinstance(command, _Sleep):
            await clock.asleep(command.seconds)
            reply = None
        else:
            try:
                reply = await adapter.status(command.xid, timeout=command.timeout)
            except Exception as exc:
                reply = exc


async def _aattempt(
    adapter: AsyncTransactionAdapter,
    fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    watch: CommitWatch,
) -> _Outcome:
    try:
        handle = await adapter.open()
    except Exception as exc:
        return _Outcome("connect", error=exc)
    discard = True
    try:
        try:
            target = await adapter.begin(handle)
            value = await fn(target, *args, **kwargs)
            xid, started = await adapter.marker(handle)
        except BaseException as exc:
            if isinstance(exc, Exception):
                try:
                    await adapter.rollback(handle)
                    discard = False
                except Exception:
                    pass
                return _Outcome("work", error=exc)
            raise  # cancelled: the connection is discarded, never awaited on again
        watch.sent()
        try:
            await adapter.commit(handle)
        except Exception as exc:
            return _Outcome("commit", value=value, error=exc, xid=xid, started=started)
        watch.settled()
        discard = False
        return _Outcome("done", value=value, xid=xid, started=started)
    finally:
        try:
            await adapter.close(handle, discard=discard)
        except Exception:
            pass


# --------------------------------------------------------------------------
# Finding the adapter for a source
# --------------------------------------------------------------------------

Matcher = str | Callable[[object], bool]
"""A qualified type name (``"psycopg_pool.pool.ConnectionPool"``, matched
against the source's class and its bases) or a predicate."""

_SYNC: list[tuple[Matcher, Callable[[Any], TransactionAdapter]]] = []
_ASYNC: list[tuple[Matcher, Callable[[Any], AsyncTransactionAdapter]]] = []

# Top-level module of a source's type -> the integration that knows it. Strings
# only: the core never imports a higher layer statically.
_INTEGRATIONS = {
    "sqlalchemy": "outlast.sqlalchemy",
    "psycopg": "outlast.psycopg",
    "psycopg_pool": "outlast.psycopg",
    "psycopg2": "outlast.psycopg2",
    "asyncpg": "outlast.asyncpg",
    "django": "outlast.django",
    "builtins": "outlast.psycopg",  # a conninfo string is for psycopg 3
}


def register_adapter(
    match: Matcher,
    factory: Callable[[Any], Any],
    *,
    asynchronous: bool = False,
) -> None:
    """Teach `Guard.transaction` (or ``atransaction``) a new kind of source.

    `factory(source)` returns a `TransactionAdapter` (an
    `AsyncTransactionAdapter` with ``asynchronous=True``). Later registrations
    win over earlier ones, so an application can override a built-in adapter.
    """
    if asynchronous:
        _ASYNC.insert(0, (match, factory))
    else:
        _SYNC.insert(0, (match, factory))


def _matches(match: Matcher, source: object) -> bool:
    if isinstance(match, str):
        return any(f"{cls.__module__}.{cls.__qualname__}" == match for cls in type(source).__mro__)
    return bool(match(source))


def _lookup(registry: list[tuple[Matcher, Callable[[Any], T]]], source: object) -> T | None:
    for match, factory in registry:
        if _matches(match, source):
            return factory(source)
    return None


def find_adapter(source: object, *, asynchronous: bool = False) -> Any:
    """The adapter for `source`, importing its integration on first use.

    Raises `TypeError` naming the source's type when no integration knows it,
    and `ConfigurationError` (a `ValueError`, without the password) for a
    conninfo string that libpq would refuse: a malformed DSN is a bug to fix,
    not an outage to retry.
    """
    if isinstance(source, str):
        from ._dsn import parse_conninfo

        parse_conninfo(source)
    registry: list[Any] = _ASYNC if asynchronous else _SYNC
    adapter = _lookup(registry, source)
    if adapter is None:
        integration = _INTEGRATIONS.get(type(source).__module__.split(".")[0])
        if integration is not None:
            try:
                importlib.import_module(f"{integration}._transaction")
            except ModuleNotFoundError as exc:
                raise TypeError(
                    f"{integration} is needed for a {type(source).__qualname__} source"
                    f" but could not be imported ({exc.name} is missing)"
                ) from exc
            adapter = _lookup(registry, source)
    if adapter is None:
        kind = "atransaction" if asynchronous else "transaction"
        raise TypeError(
            f"Guard.{kind}() does not know how to open a transaction on a"
            f" {type(source).__module__}.{type(source).__qualname__}; pass a SQLAlchemy"
            " engine or sessionmaker, a psycopg pool or conninfo string, a psycopg2 pool,"
            " an asyncpg pool, or register an adapter with outlast.register_adapter()"
        )
    return adapter
