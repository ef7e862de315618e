"""`outlast.Guard`: one per database; the calling surface over `GuardBase`.

Why the code looks the way it does: the success path is hot. While the
breaker is closed and nothing failed recently, ``self._fast`` is True and a
call is one attribute check, one counter increment and the user's function
inside ``try``. Everything else (the retry loop, the lock, events) lives in
the ``except`` branch or in the slow path taken while something is wrong.
Sync and async share every decision (`GuardBase`); `_run` and `_arun` are
thin loops that only differ in ``await``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

from outlast._core.faults.errors import DatabaseUnavailable, fast_unavailable
from outlast._core.faults.fault import FaultKind
from outlast._core.timing.clock import Clock
from outlast._core.timing.durations import Seconds

from .admission import PASS, Admission, admit, admit_now
from .backoff import Backoff, Retry
from .base import ADMITTED, OPEN_MESSAGE, Classifier, GuardBase, Run, op_name, per_call_timeout
from .breaker import Breaker
from .events import Listener, process_listeners

__all__ = ["Admission", "Classifier", "Guard"]

P = ParamSpec("P")
T = TypeVar("T")
D = TypeVar("D")

_SAFE_PROPAGATES = frozenset({FaultKind.PERMANENT, FaultKind.COMMIT_UNKNOWN})


class Guard(GuardBase):
    """Protects every call to one database: retries, circuit breaker, state, events.

    All configuration is keyword-only. The defaults suit a web service: up
    to 5 tries within 5 seconds of the first failure (backoff 0.1 s doubling
    to 2 s, jittered), a breaker that opens after 5 consecutive failures or a
    50 % failure rate over 30 s (10 calls minimum), for 1 s growing to 5 s.

    `classifier` maps an exception to a `Fault` (or None for "not a database
    error"); it defaults to `outlast.classify`. `listeners` replace the
    default ``(outlast.log_event,)``; `clock` defaults to the system clock.
    """

    __slots__ = ()

    @classmethod
    def for_web(
        cls,
        name: str = "default",
        *,
        retry: Retry | None = None,
        breaker: Breaker | None = None,
        listeners: Iterable[Listener] | None = None,
        classifier: Classifier | None = None,
        clock: Clock | None = None,
    ) -> Guard:
        """A Guard tuned for a web service: it lets the first request through soon after
        the database is back, and never waits longer than a request can.

        - `breaker`: ``Breaker(failure_threshold=3, open_for=0.5, max_open_for=0.5)``.
          Three straight failures open it, for half a second, and the period
          never grows: once the database is back, the next request after at
          most 0.5 s is the probe, so the first 200 comes within about half a
          second plus one request, even after a long outage. One probe every
          0.5 s is no load for a database. (The plain `Guard` opens for 1 s,
          doubling up to 5 s: fine for a batch job, several seconds of 503s
          too many for a web service.)
        - `retry`: ``Retry(attempts=3, backoff=Backoff(initial=0.05, cap=0.5))``:
          a web request passes the rest of its budget as the timeout, and a
          retry that sleeps 2 s would use most of it.

        The web integrations make one of these when they are given no Guard.
        Every option can be replaced, as for `Guard`.
        """
        if retry is None:
            retry = Retry(attempts=3, backoff=Backoff(initial=0.05, multiplier=2.0, cap=0.5))
        if breaker is None:
            breaker = Breaker(failure_threshold=3, open_for=0.5, max_open_for=0.5)
        return cls(
            name,
            retry=retry,
            breaker=breaker,
            listeners=listeners,
            classifier=classifier,
            clock=clock,
        )

    # -- calling ------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` under the guard and return its result.

        Database faults are retried according to `retry` and the fault table
        (``idempotent=True`` also allows retrying an UNAVAILABLE fault after
        the statement was sent). `timeout` (seconds or a timedelta, counted
        from now) replaces the retry policy's timeout for this call, e.g. a web
        request's remaining budget; ``deadline=`` is its old, deprecated name.
        To pass a ``timeout=`` keyword to `fn` itself (asyncpg's ``fetch``),
        bind it first: ``guard.acall(functools.partial(conn.fetch, sql, timeout=2))``.
        `op` names the operation in events and logs (default: the function's
        ``__qualname__``). Raises `DatabaseUnavailable` when the breaker is
        open or retries of an UNAVAILABLE/READ_ONLY fault ran out.
        """
        start = None
        if timeout is not None or deadline is not None:
            timeout, start = per_call_timeout(timeout, deadline), self._clock.monotonic()
        if self._fast:
            self._calls += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                fault = self._classify(exc)
                if fault is None:
                    raise
                run = Run(op_name(fn, op), idempotent, timeout, start)
                delay = self._failed(run, exc, fault, 0)
            # Retry outside the except block, so later errors do not chain to this one.
            self._clock.sleep(delay)
            return self._run(run, fn, args, kwargs)
        now = self._clock.monotonic()
        until = self._reject_until
        if now < until:
            # Open: fail fast, with no lock, no Run, no extra frame and nothing
            # allocated but the error (built without its keyword __init__).
            self._counters.rejected += 1
            if process_listeners():
                self._tell_rejected(until - now)
            raise fast_unavailable(OPEN_MESSAGE, until - now, self._tracker.last_fault, self.name)
        self._counters.slow_calls += 1
        return self._run(Run(op_name(fn, op), idempotent, timeout, start), fn, args, kwargs)

    async def acall(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T:
        """The async twin of `call`: awaits ``fn(*args, **kwargs)``; sleeps never block."""
        start = None
        if timeout is not None or deadline is not None:
            timeout, start = per_call_timeout(timeout, deadline), self._clock.monotonic()
        if self._fast:
            self._calls += 1
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                fault = self._classify(exc)
                if fault is None:
                    raise
                run = Run(op_name(fn, op), idempotent, timeout, start)
                delay = self._failed(run, exc, fault, 0)
            await self._clock.asleep(delay)
            return await self._arun(run, fn, args, kwargs)
        now = self._clock.monotonic()
        until = self._reject_until
        if now < until:
            self._counters.rejected += 1
            if process_listeners():
                self._tell_rejected(until - now)
            raise fast_unavailable(OPEN_MESSAGE, until - now, self._tracker.last_fault, self.name)
        self._counters.slow_calls += 1
        run = Run(op_name(fn, op), idempotent, timeout, start)
        return await self._arun(run, fn, args, kwargs)

    def admit(self, *, op: str | None = None) -> Admission:
        """Ask the breaker once for work that does not run inside `call` (a web request).

        Raises `DatabaseUnavailable` when the breaker rejects: open, or
        half-open with a probe already in flight. While it is closed this
        returns at once (a shared admission that holds nothing). When the
        breaker is half-open and the slot is free, the work is the probe:
        checks inside it (``check()``, hardened pools, nested `call`) let it
        through, and `Admission.release` (or leaving its ``with`` /
        ``async with`` block) records success if no database fault escaped,
        failure if one did (unless the work's own calls already settled the
        probe), and frees the slot. `op` names the work in events.
        """
        if self._fast:
            return PASS
        return admit(self, op)

    def _admit_now(self, op: str | None, *, mark: bool = True) -> Admission:
        """The breaker's decision, whatever the context says (for `FirstUse`)."""
        return admit_now(self, op, mark=mark)

    @overload
    def retrying(self, fn: Callable[P, T], /) -> Callable[P, T]: ...

    @overload
    def retrying(
        self, fn: None = None, /, *, idempotent: bool = False, op: str | None = None
    ) -> Callable[[Callable[P, T]], Callable[P, T]]: ...

    def retrying(
        self,
        fn: Callable[P, T] | None = None,
        /,
        *,
        idempotent: bool = False,
        op: str | None = None,
    ) -> Callable[P, T] | Callable[[Callable[P, T]], Callable[P, T]]:
        """Decorate a sync or async function so every call goes through `call`/`acall`.

        Usable bare (``@db.retrying``) or with options
        (``@db.retrying(idempotent=True, op="fetch_leads")``).
        """
        if fn is None:
            return functools.partial(self._decorate, idempotent=idempotent, op=op)
        return self._decorate(fn, idempotent=idempotent, op=op)

    def _decorate(self, fn: Callable[P, T], *, idempotent: bool, op: str | None) -> Callable[P, T]:
        name = op_name(fn, op)
        guard = self
        # The wrappers repeat the fast path of `call`/`acall` instead of calling
        # them: that saves a call frame and keyword handling on every success, and
        # the decorated function keeps its own `op`/`timeout`/`idempotent` kwargs.
        if inspect.iscoroutinefunction(fn):
            afn: Callable[..., Awaitable[Any]] = fn

            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if guard._fast:
                    guard._calls += 1
                    try:
                        return await afn(*args, **kwargs)
                    except Exception as exc:
                        fault = guard._classify(exc)
                        if fault is None:
                            raise
                        run = Run(name, idempotent, None, None)
                        delay = guard._failed(run, exc, fault, 0)
                    await guard._clock.asleep(delay)
                    return await guard._arun(run, afn, args, kwargs)
                guard._counters.slow_calls += 1
                return await guard._arun(Run(name, idempotent, None, None), afn, args, kwargs)

            wrapper: Callable[..., Any] = async_wrapper
        else:

            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                if guard._fast:
                    guard._calls += 1
                    try:
                        return fn(*args, **kwargs)
                    except Exception as exc:
                        fault = guard._classify(exc)
                        if fault is None:
                            raise
                        run = Run(name, idempotent, None, None)
                        delay = guard._failed(run, exc, fault, 0)
                    guard._clock.sleep(delay)
                    return guard._run(run, fn, args, kwargs)
                guard._counters.slow_calls += 1
                return guard._run(Run(name, idempotent, None, None), fn, args, kwargs)

            wrapper = sync_wrapper
        functools.update_wrapper(wrapper, fn)
        return wrapper

    @overload
    def safe(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        default: None = None,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T | None: ...

    @overload
    def safe(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        default: D,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T | D: ...

    def safe(
        self,
        fn: Callable[..., T],
        /,
        *args: Any,
        default: Any = None,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Like `call`, but return `default` when the database is unavailable.

        PERMANENT faults (bugs, bad configuration) and COMMIT_UNKNOWN (a
        write whose outcome nobody knows) still propagate, as do
        non-database exceptions.
        """
        try:
            return self.call(
                fn,
                *args,
                idempotent=idempotent,
                op=op,
                timeout=timeout,
                deadline=deadline,
                **kwargs,
            )
        except Exception as exc:
            if self._safe_swallows(exc):
                return default
            raise

    @overload
    async def asafe(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        default: None = None,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T | None: ...

    @overload
    async def asafe(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        default: D,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T | D: ...

    async def asafe(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        default: Any = None,
        idempotent: bool = False,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """The async twin of `safe`."""
        try:
            return await self.acall(
                fn,
                *args,
                idempotent=idempotent,
                op=op,
                timeout=timeout,
                deadline=deadline,
                **kwargs,
            )
        except Exception as exc:
            if self._safe_swallows(exc):
                return default
            raise

    def _safe_swallows(self, exc: Exception) -> bool:
        """Does `safe`/`asafe` answer `exc` with its default (the database is unavailable)?"""
        if isinstance(exc, DatabaseUnavailable):
            return True
        fault = self._classify(exc)
        return fault is not None and fault.kind not in _SAFE_PROPAGATES

    # -- transactions (the algorithm lives in outlast._core.transactions.machine) ----------------

    def transaction(
        self,
        source: Any,
        fn: Callable[..., T],
        /,
        *args: Any,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in a transaction on `source` and commit it.

        Re-runs the whole function on faults that struck before COMMIT; resolves
        a lost COMMIT with ``pg_xact_status`` (never re-sends it) and raises
        `CommitOutcomeUnknown` if that cannot be settled in time. `timeout`
        (seconds from now) replaces the retry policy's timeout for this call, as
        in `call` (``deadline=`` is its deprecated name).
        """
        from outlast._core.transactions.adapters import find_adapter
        from outlast._core.transactions.machine import run_transaction

        adapter = find_adapter(source)
        timeout = per_call_timeout(timeout, deadline)
        return run_transaction(self, adapter, fn, *args, op=op, timeout=timeout, **kwargs)

    async def atransaction(
        self,
        source: Any,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        op: str | None = None,
        timeout: Seconds | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T:
        """The async twin of `transaction`: ``await fn(conn, *args, **kwargs)``."""
        from outlast._core.transactions.adapters import find_adapter
        from outlast._core.transactions.machine import arun_transaction

        adapter = find_adapter(source, asynchronous=True)
        timeout = per_call_timeout(timeout, deadline)
        return await arun_transaction(self, adapter, fn, *args, op=op, timeout=timeout, **kwargs)

    # -- the slow path ------------------------------------------------------------

    def _run(
        self, run: Run, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        while True:
            token = self._admit(run)
            admitted = ADMITTED.set(self)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                fault = self._classify(exc)
                if fault is None:
                    self._release(token)
                    raise
                delay = self._failed(run, exc, fault, token)
            except BaseException:
                self._release(token)
                raise
            else:
                self._succeeded(run.op, token, run.failed > 0)
                return result
            finally:
                ADMITTED.reset(admitted)
            self._clock.sleep(delay)

    async def _arun(
        self,
        run: Run,
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> T:
        while True:
            token = self._admit(run)
            admitted = ADMITTED.set(self)
            try:
                result = await fn(*args, **kwargs)
            except Exception as exc:
                fault = self._classify(exc)
                if fault is None:
                    self._release(token)
                    raise
                delay = self._failed(run, exc, fault, token)
            except BaseException:  # CancelledError included: free the probe slot
                self._release(token)
                raise
            else:
                self._succeeded(run.op, token, run.failed > 0)
                return result
            finally:
                ADMITTED.reset(admitted)
            await self._clock.asleep(delay)
