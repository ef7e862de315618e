"""Whole-transaction retries that survive a lost COMMIT (driver-agnostic core).

``Guard.transaction(source, fn)`` runs ``fn(connection)`` inside a transaction
and commits it. What happens on a database fault depends on *when* it struck:

- before COMMIT was sent (connect, a statement, reading the xid): the server
  rolled the transaction back, so an UNAVAILABLE, CONFLICT or READ_ONLY fault
  re-runs the *whole* function on a fresh connection, within the Guard's
  attempts and timeout (or the call's own ``timeout=``, e.g. the rest of a
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

  The marker assigns the xid when the transaction has none yet: a
  transaction whose only effect is a ``NOTIFY``, or whose ORM writes during
  COMMIT, has no xid before COMMIT, and "no xid" must not be read as
  "nothing written" (`MARKER_SQL`). Only a hot standby, which can write
  nothing, answers NULL; its lost COMMIT changed nothing, so its result is
  returned as is. A COMMIT is never blindly re-sent.

What the Guard learns from a lost COMMIT follows its outcome, not the lost
connection alone: found committed, the call succeeded and the server
answered (a success); found aborted, it is the failure it seemed (counted,
then the whole function runs again); never settled, it is counted with the
`CommitOutcomeUnknown`. Faults that pool hooks report while the COMMIT is in
flight are left to this judgement (`COMMIT_IN_FLIGHT`), so nothing counts twice.

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

import asyncio
import contextvars
import random
import threading
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol, TypeVar, cast

from outlast._core.faults.errors import CommitOutcomeUnknown, DatabaseUnavailable
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.guard.base import COMMIT_IN_FLIGHT
from outlast._core.timing.budget import CommitWatch
from outlast._core.timing.clock import SYSTEM_CLOCK, Clock

from .adapters import (
    AsyncTransactionAdapter,
    GuardLike,
    StatusReply,
    TransactionAdapter,
)

__all__ = ["arun_transaction", "resolve_commit", "run_transaction"]

T = TypeVar("T")
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
    lost: bool = False  # the connection was gone after the error (`adapter.lost`)


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
# The shells bound each status question by its timeout (whatever the driver's
# own connect timeout, which libpq rounds up to 2 s); a spent timeout still
# asks once, this briefly: when the server is up the answer takes milliseconds.
_MIN_PROBE_TIMEOUT = 0.25
_NO_TIMEOUT_PROBE_TIMEOUT = 10.0


class _NoAnswer(Exception):
    """The status question got no answer within its timeout (says nothing of the COMMIT)."""

    def __init__(self, command: _Ask) -> None:
        super().__init__(f"no answer about transaction {command.xid} in {command.timeout:.2f}s")


def _decide(
    guard: GuardLike,
    op: str | None,
    now: Callable[[], float],
    rand: Callable[[], float],
    timeout: float | None = None,
) -> Generator[_Command, object, object]:
    """The whole algorithm, free of I/O. Returns fn's result or raises.

    `timeout` (seconds from the start of the call, e.g. the rest of a web
    request's budget) replaces the retry policy's timeout, which counts from
    the first failure.
    """
    policy = guard.retry
    start = None if timeout is None else now()
    if timeout is None:
        timeout = policy.timeout
    failed = 0  # attempts of fn that failed (a resolved "aborted" counts)
    # Where the timeout counts from: the call's start, else the first failure.
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
        if outcome.stage == "commit":
            # Classified once, as a failure of COMMIT; a lost one is counted
            # only once its outcome is known (a committed one is a success).
            fault = guard.classify(exc, during_commit=True)
            fault = _gone(fault, outcome, FaultKind.COMMIT_UNKNOWN)
            if fault is not None and fault.kind in _UNKNOWN_AT_COMMIT:
                if outcome.xid is None:
                    # A hot standby: nothing can have been written, so
                    # committed or not, fn's result stands.
                    guard.record_failure(exc, op=op, fault=fault)
                    return outcome.value
                try:
                    resolved = yield from _resolve(
                        guard,
                        op,
                        timeout=timeout,
                        outcome=outcome,
                        fault=fault,
                        exc=exc,
                        now=now,
                        rand=rand,
                        first_failure=first_failure,
                    )
                except CommitOutcomeUnknown:
                    guard.record_commit_outcome("unknown", op=op)
                    raise
                guard.record_commit_outcome("committed" if resolved else "aborted", op=op)
                if resolved:
                    return outcome.value
                # aborted: nothing was written; fall through to a retry
            guard.record_failure(exc, op=op, fault=fault)
        else:
            fault = _gone(guard.classify(exc), outcome, FaultKind.UNAVAILABLE)
            guard.record_failure(exc, op=op, fault=fault)
        # Here the server rolled the transaction back (or a resolved COMMIT
        # was aborted): re-run the whole function if the fault allows it.
        if fault is None or fault.kind not in _RETRIED_WHOLE:
            raise exc
        failed += 1
        sleep = policy.next_sleep(failed, now() - first_failure, timeout, rand())
        if sleep is None:
            raise _give_up(guard, fault, failed, exc)
        yield _Sleep(sleep)


def _gone(fault: Fault | None, outcome: _Outcome, kind: FaultKind) -> Fault | None:
    """A client-side error raised as the connection died is the loss of that connection.

    Drivers meeting a FATAL message or a closed socket at an unexpected
    moment may raise an error that reads like a bug (asyncpg "cannot switch
    to state", psycopg "received 2 results from command 'COMMIT'"). When the
    adapter says the connection is gone, what counts is that: the server
    rolled the transaction back (`kind` UNAVAILABLE: re-run it), or, at
    COMMIT, may have committed it (COMMIT_UNKNOWN: ask). An error the server
    sent (it has a SQLSTATE) keeps its meaning, and so does a timeout.
    """
    if (
        not outcome.lost
        or fault is None
        or fault.kind is not FaultKind.PERMANENT
        or fault.sqlstate is not None
    ):
        return fault
    return replace(fault, kind=kind, reason="connection_lost", transient=True)


def _resolve(
    guard: GuardLike,
    op: str | None,
    *,
    timeout: float | None,
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
        if timeout is None:
            ask_for = _NO_TIMEOUT_PROBE_TIMEOUT
        else:
            ask_for = max(_MIN_PROBE_TIMEOUT, timeout - (now() - first_failure))
        reply = yield _Ask(xid, ask_for)
        if isinstance(reply, StatusReply):
            if reply.status == "committed":
                if outcome.started is not None and reply.started != outcome.started:
                    raise _unknown(
                        guard,
                        op,
                        f"COMMIT outcome unknown: the server restarted before transaction"
                        f" {xid} could be checked; pg_xact_status() may describe another"
                        " transaction after a crash",
                        xid=xid,
                        fault=fault,
                        cause=exc,
                    )
                guard.record_success(op=op)
                return True
            if reply.status in ("aborted", "unassigned"):
                return False
            if reply.status is None:
                raise _unknown(
                    guard,
                    op,
                    f"COMMIT outcome unknown: the server no longer remembers transaction {xid}",
                    xid=xid,
                    fault=fault,
                    cause=exc,
                )
            why = f"transaction still {reply.status}"
        elif isinstance(reply, DatabaseUnavailable | _NoAnswer):
            # The breaker (or a hardened pool obeying it) refused the status
            # question, or it went unanswered in time. That says nothing about
            # the COMMIT: it is still unknown, so keep asking until the
            # timeout runs out, then say so.
            last_error = reply
            why = (
                "unreachable (circuit breaker open)"
                if isinstance(reply, DatabaseUnavailable)
                else "no answer to the status question"
            )
        else:
            assert isinstance(reply, Exception)
            last_error = reply
            probe_fault = guard.record_failure(reply, op=op)
            if probe_fault is None:
                guard.record_failure(exc, op=op, fault=fault)
                raise reply
            if probe_fault.kind is FaultKind.PERMANENT:
                raise _unknown(
                    guard,
                    op,
                    f"COMMIT outcome unknown for transaction {xid}: the status query failed"
                    f" ({probe_fault.reason}); check pg_xact_status('{xid}') later",
                    xid=xid,
                    fault=fault,
                    cause=reply,
                )
            why = f"unreachable ({probe_fault.reason})"
        probes += 1
        elapsed = now() - first_failure
        if timeout is None:
            sleep = policy.next_sleep(probes, elapsed, None, rand())
        else:
            delay = policy.backoff.delay(probes, rand())
            sleep = None if elapsed + delay > timeout else delay
        if sleep is None:
            raise _unknown(
                guard,
                op,
                f"COMMIT outcome unknown for transaction {xid}: {why} after {probes}"
                f" check(s) in {elapsed:.1f}s; check pg_xact_status('{xid}') later",
                xid=xid,
                fault=fault,
                cause=last_error,
            )
        yield _Sleep(sleep, resolving=True)


def _unknown(
    guard: GuardLike,
    op: str | None,
    message: str,
    *,
    xid: str,
    fault: Fault,
    cause: BaseException,
) -> CommitOutcomeUnknown:
    """The error for a COMMIT whose outcome stays unknown, counted once as the lost COMMIT."""
    error = CommitOutcomeUnknown(message, xid=xid, fault=fault)
    error.__cause__ = cause  # as ``raise error from cause``
    error.__suppress_context__ = True
    guard.record_failure(error, op=op, fault=fault)
    return error


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
    timeout: float | None = None,
    **kwargs: Any,
) -> T:
    """Run ``fn(conn, *args, **kwargs)`` in a transaction with commit-unknown resolution."""
    clock = _clock(guard)
    machine = _decide(guard, _op_name(fn, op), clock.monotonic, random.random, timeout)
    watch = CommitWatch()
    reply: object = None
    while True:
        command = _next(machine, reply, watch)
        if isinstance(command, _Done):
            return cast(T, command.value)
        if isinstance(command, _Attempt):
            reply = _attempt(guard, adapter, fn, args, kwargs, watch=watch)
        elif isinstance(command, _Sleep):
            clock.sleep(command.seconds)
            reply = None
        else:
            reply = _ask(adapter, command)


class _AsksStatus(Protocol):
    """The part of an adapter that `resolve_commit` needs."""

    def status(self, xid: str, *, timeout: float) -> StatusReply: ...


def resolve_commit(
    guard: GuardLike,
    adapter: _AsksStatus,
    *,
    xid: str,
    started: str | None,
    error: Exception,
    fault: Fault,
    op: str | None = None,
    timeout: float | None = None,
) -> bool:
    """Resolve one COMMIT lost outside `run_transaction` (an ORM's own commit).

    `xid` and `started` are what `MARKER_SQL` read just before COMMIT; `error`
    is what COMMIT raised and `fault` its classification (already counted by
    the caller). Asks ``adapter.status`` exactly as `run_transaction` does:
    True committed, False aborted (nothing was written), else
    `CommitOutcomeUnknown` once `timeout` (seconds from now) runs out.
    """
    clock = _clock(guard)
    machine = _resolve(
        guard,
        op,
        timeout=timeout,
        outcome=_Outcome("commit", error=error, xid=xid, started=started),
        fault=fault,
        exc=error,
        now=clock.monotonic,
        rand=random.random,
        first_failure=clock.monotonic(),
    )
    reply: object = None
    while True:
        try:
            command = machine.send(reply)
        except StopIteration as stop:
            return bool(stop.value)
        if isinstance(command, _Ask):
            reply = _ask(adapter, command)
        else:
            assert isinstance(command, _Sleep)
            clock.sleep(command.seconds)
            reply = None


def _ask(adapter: _AsksStatus, command: _Ask) -> object:
    """``adapter.status()``, answered within ``command.timeout`` or `_NoAnswer`.

    The question runs in a thread of its own (with this context: the Guard's
    admission, the web request's budget) because a blocking driver cannot be
    interrupted: a connect on a frozen link waits its whole connect timeout.
    The thread ends by itself (every step has a timeout); a late answer is
    dropped. Lost COMMITs are rare, so is this thread.
    """
    box: list[object] = []

    def run() -> None:
        try:
            box.append(adapter.status(command.xid, timeout=command.timeout))
        except Exception as exc:
            box.append(exc)

    context = contextvars.copy_context()
    asker = threading.Thread(target=context.run, args=(run,), name="outlast-xact-status")
    asker.daemon = True
    asker.start()
    asker.join(command.timeout)
    if not box:
        return _NoAnswer(command)
    return box[0]


def _lost(adapter: TransactionAdapter, handle: Any) -> bool:
    """``adapter.lost(handle)`` where the adapter has it; never raises."""
    lost = getattr(adapter, "lost", None)
    if lost is None:
        return False
    try:
        return bool(lost(handle))
    except Exception:
        return False


async def _alost(adapter: AsyncTransactionAdapter, handle: Any) -> bool:
    lost = getattr(adapter, "lost", None)
    if lost is None:
        return False
    try:
        return bool(await lost(handle))
    except Exception:
        return False


def _attempt(
    guard: GuardLike,
    adapter: TransactionAdapter,
    fn: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
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
            lost = isinstance(exc, Exception) and _lost(adapter, handle)
            try:
                adapter.rollback(handle)
                discard = lost
            except Exception:
                pass
            if not isinstance(exc, Exception):
                raise
            return _Outcome("work", error=exc, lost=lost)
        watch.sent()
        judged_later = COMMIT_IN_FLIGHT.set(guard)
        try:
            adapter.commit(handle)
        except Exception as exc:
            lost = _lost(adapter, handle)
            return _Outcome("commit", value=value, error=exc, xid=xid, started=started, lost=lost)
        finally:
            COMMIT_IN_FLIGHT.reset(judged_later)
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
    timeout: float | None = None,
    **kwargs: Any,
) -> T:
    """The asyncio twin of `run_transaction`: ``await fn(conn, *args, **kwargs)``."""
    clock = _clock(guard)
    machine = _decide(guard, _op_name(fn, op), clock.monotonic, random.random, timeout)
    watch = CommitWatch()
    reply: object = None
    while True:
        command = _next(machine, reply, watch)
        if isinstance(command, _Done):
            return cast(T, command.value)
        if isinstance(command, _Attempt):
            reply = await _aattempt(guard, adapter, fn, args, kwargs, watch=watch)
        elif isinstance(command, _Sleep):
            await clock.asleep(command.seconds)
            reply = None
        else:
            reply = await _aask(adapter, command)


async def _aask(adapter: AsyncTransactionAdapter, command: _Ask) -> object:
    """The async twin of `_ask`: the question is cancelled at its timeout."""
    limit = asyncio.timeout(command.timeout)
    try:
        async with limit:
            return await adapter.status(command.xid, timeout=command.timeout)
    except TimeoutError as exc:
        if limit.expired():
            return _NoAnswer(command)
        return exc
    except Exception as exc:
        return exc


async def _aattempt(
    guard: GuardLike,
    adapter: AsyncTransactionAdapter,
    fn: Callable[..., Awaitable[object]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
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
                lost = await _alost(adapter, handle)
                try:
                    await adapter.rollback(handle)
                    discard = lost
                except Exception:
                    pass
                return _Outcome("work", error=exc, lost=lost)
            raise  # cancelled: the connection is discarded, never awaited on again
        watch.sent()
        judged_later = COMMIT_IN_FLIGHT.set(guard)
        try:
            await adapter.commit(handle)
        except Exception as exc:
            lost = await _alost(adapter, handle)
            return _Outcome("commit", value=value, error=exc, xid=xid, started=started, lost=lost)
        finally:
            COMMIT_IN_FLIGHT.reset(judged_later)
        watch.settled()
        discard = False
        return _Outcome("done", value=value, xid=xid, started=started)
    finally:
        try:
            await adapter.close(handle, discard=discard)
        except Exception:
            pass
