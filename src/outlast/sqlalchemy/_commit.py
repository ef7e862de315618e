"""Every COMMIT and ROLLBACK of a hardened engine: bounded, resolved when lost, quiet when dead.

No cursor event covers COMMIT and ROLLBACK (SQLAlchemy sends them through the
dialect), so `TransactionEnds` wraps the engine's own dialect methods. That
reaches every way an application commits: ``session.commit()`` (a FastAPI
dependency's session, Flask-SQLAlchemy's ``db.session``), ``engine.begin()``,
``connection.commit()``, sync or asyncio.

- **Bounded**: COMMIT and ROLLBACK run under the statement deadline (or the
  rest of the web request's budget), so a frozen link cannot hold a request
  past its budget.
- **A lost COMMIT is resolved, never guessed**: before COMMIT of a
  transaction that ran a statement, one round trip reads its id
  (`MARKER_SQL`, which assigns one if needed: a transaction whose only
  effect is a NOTIFY would otherwise get one only at COMMIT; a transaction
  that ran nothing but plain queries is asked without assigning one, so its
  COMMIT stays cheap). The marker is read inside the dialect's COMMIT, after
  the session's last flush: an ORM session with ``autoflush=False`` has sent
  its INSERT by then. When the COMMIT then
  fails without an answer from the server (the link died, a deadline fired),
  ``pg_xact_status()`` is asked on a fresh connection within the rest of the
  budget (`outlast._core.transactions.lost_commit`): ``committed`` -- the
  commit returns normally, the caller never knows; ``aborted`` --
  `DatabaseUnavailable` ("not applied", a 503 that is safe to retry); no
  answer in time -- `CommitOutcomeUnknown` (a 503 ``OUTCOME_UNKNOWN``). A
  transaction with no id wrote nothing: its lost COMMIT raises the driver's
  error, which means "not applied". The request is marked while the outcome
  is open, so whatever else fails then is answered ``OUTCOME_UNKNOWN`` too.
- **A ROLLBACK on a dead link is quiet**: the server ends the transaction of
  a connection that died, so a ROLLBACK that fails for that reason (a session
  closed after a fault, the pool resetting a connection it gets back) is not
  an error: the connection is marked to be replaced and nothing reaches the
  server log (SQLAlchemy's pool logs a failed reset with a traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from outlast._core.connections.hardening import FaultReporter, Hardening
from outlast._core.connections.socket_deadline import connection_fileno
from outlast._core.connections.statements import statement_bound
from outlast._core.faults.errors import CommitOutcomeUnknown, DatabaseUnavailable
from outlast._core.faults.fault import FaultKind
from outlast._core.timing.budget import (
    CommitWatch,
    budget_remaining,
    note_committed_write,
    note_outcome_unknown,
)
from outlast._core.transactions.adapters import MARKER_SQL, StatusReply, status_sql
from outlast._core.transactions.lost_commit import UNKNOWN_AT_COMMIT, resolve_lost_commit
from outlast._core.transactions.machine import _ask

if TYPE_CHECKING:
    from outlast._core.transactions.machine import _Ask

__all__ = ["TransactionEnds", "TransactionInfo", "autocommit_write_lost", "resolved_elsewhere"]

logger = logging.getLogger("outlast")

_STATUS = text(status_sql(":xid"))
#: Forces an xid on a transaction whose effect would only get one at COMMIT.
_ASSIGN_SQL = "SELECT pg_current_xact_id()::text"
#: For a transaction that ran only plain queries: reads the xid without
#: assigning one, so a read-only transaction's COMMIT stays free of a WAL record.
_READ_MARKER_SQL = "SELECT pg_current_xact_id_if_assigned()::text, pg_postmaster_start_time()::text"
# A statement that only reads (nothing it does waits for COMMIT to take effect).
_READ_ONLY = re.compile(
    r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*(?:select|show|values|table)\b", re.I | re.S
)
#: Set while ``Guard.transaction`` commits: it reads the marker and resolves a
#: lost COMMIT itself (and may re-run the work), so the hook only bounds it.
_RESOLVED_ELSEWHERE: ContextVar[bool] = ContextVar(
    "outlast_commit_resolved_elsewhere", default=False
)


@contextlib.contextmanager
def resolved_elsewhere() -> Iterator[None]:
    """``with resolved_elsewhere(): handle.commit()`` -- the caller resolves a lost COMMIT."""
    token = _RESOLVED_ELSEWHERE.set(True)
    try:
        yield
    finally:
        _RESOLVED_ELSEWHERE.reset(token)


#: Below this much budget left, a lost COMMIT is not asked about (the question
#: itself may take that long): the answer would come after the budget.
_MIN_QUESTION = 0.25
_DEAD_LINK = frozenset({FaultKind.UNAVAILABLE, FaultKind.COMMIT_UNKNOWN, FaultKind.TIMEOUT})


class TransactionInfo:
    """What one pooled connection's current transaction did (reset at its end)."""

    __slots__ = ("dead", "notify", "statements", "wrote")

    def __init__(self) -> None:
        self.statements = 0
        self.notify = False  # a NOTIFY (or pg_notify) may be queued
        self.wrote = False  # something other than a plain query ran
        self.dead = False  # the link died under it: never talk on it again

    def saw(self, statement: str) -> None:
        """A statement is about to run in the current transaction."""
        self.statements += 1
        if not self.notify and "notify" in statement.lower():
            self.notify = True
        if not self.wrote and not _READ_ONLY.match(statement):
            self.wrote = True

    def ended(self) -> None:
        self.statements = 0
        self.notify = self.wrote = False


class TransactionEnds:
    """The wrapped ``do_commit`` / ``do_rollback`` of one engine's dialect."""

    def __init__(
        self,
        engine: Engine,
        guard: FaultReporter | None,
        preset: Hardening,
        info_of: Callable[[Any], TransactionInfo | None],
        timed: tuple[str | None, str] | None = None,
    ) -> None:
        self.engine = engine
        self.timed = timed  # labels of the operation-duration histogram
        self.guard = guard
        self.preset = preset
        self.info_of = info_of
        dialect = engine.dialect
        self._commit = dialect.do_commit
        self._rollback = dialect.do_rollback
        self._resolver: Any = None

    def install(self) -> None:
        """Replace the dialect's methods (each engine has a dialect of its own)."""
        dialect = self.engine.dialect
        dialect.do_commit = self.do_commit  # type: ignore[method-assign]
        dialect.do_rollback = self.do_rollback  # type: ignore[method-assign]

    # -- ROLLBACK -------------------------------------------------------------------

    def do_rollback(self, dbapi_connection: PoolProxiedConnection) -> None:
        info = self.info_of(dbapi_connection)
        if info is not None:
            info.ended()
            if info.dead:
                return  # the server already ended it; the link is gone
        fileno = connection_fileno(dbapi_connection)
        try:
            with statement_bound(fileno, self.preset, self.timed):
                self._rollback(dbapi_connection)
        except Exception as exc:
            if not self._link_died(exc):
                raise
            # The server ends the transaction of a connection that died: the
            # rollback happened. Replace the connection, say nothing loud.
            _retire(dbapi_connection, info)
            logger.debug("[ROLLBACK_ON_DEAD_LINK] connection replaced: %s", type(exc).__name__)

    def _link_died(self, exc: BaseException) -> bool:
        fault = self.guard.classify(exc) if self.guard is not None else _classify(exc)
        return fault is not None and fault.kind in _DEAD_LINK

    # -- COMMIT ---------------------------------------------------------------------

    def do_commit(self, dbapi_connection: PoolProxiedConnection) -> None:
        info = self.info_of(dbapi_connection)
        fileno = connection_fileno(dbapi_connection)
        if info is None or not info.statements or _RESOLVED_ELSEWHERE.get():
            # Nothing ran in this transaction (a lost COMMIT loses nothing), or
            # Guard.transaction runs it and resolves its COMMIT itself.
            if info is not None:
                info.ended()
            with statement_bound(fileno, self.preset, self.timed):
                self._commit(dbapi_connection)
            return
        try:
            with statement_bound(fileno, self.preset, self.timed):
                xid, started = _marker(dbapi_connection, info)
        except BaseException:
            # COMMIT was never sent: if the link died, the server rolls back.
            info.ended()
            raise
        info.ended()
        watch = CommitWatch()
        watch.sent()
        try:
            with statement_bound(fileno, self.preset, self.timed):
                self._commit(dbapi_connection)
        except Exception as exc:
            self._lost(exc, (xid, started), dbapi_connection, info, watch)
            return
        except BaseException:
            raise  # cancelled with the COMMIT in flight: the request stays marked
        watch.settled()
        if xid is not None:
            note_committed_write()  # a later failure of the request is not "not applied"

    def _lost(
        self,
        exc: Exception,
        marker: tuple[str | None, str | None],
        dbapi_connection: PoolProxiedConnection,
        info: TransactionInfo,
        watch: CommitWatch,
    ) -> None:
        """The COMMIT raised `exc`: return if it committed after all, else raise."""
        xid, started = marker
        guard = self.guard if self.guard is not None else self._fallback_guard()
        fault = guard.classify(exc, during_commit=True)
        if fault is None or fault.kind not in UNKNOWN_AT_COMMIT or xid is None:
            # The server answered (it rolled back), or the transaction wrote
            # nothing: either way nothing was applied.
            watch.settled()
            raise exc
        guard.record_failure(exc, op="commit", fault=fault)
        timeout = budget_remaining()
        if timeout is None:
            timeout = _retry_timeout(guard)
        elif timeout < _MIN_QUESTION:
            # The request's budget is spent (its deadline is what cut the
            # COMMIT short): asking now would answer after the budget.
            raise CommitOutcomeUnknown(
                f"COMMIT outcome unknown for transaction {xid}: the request's budget ran out"
                f" with the COMMIT in flight; check pg_xact_status('{xid}') later",
                xid=xid,
                fault=fault,
            ) from exc
        # Raises CommitOutcomeUnknown when nobody can tell in time (the request
        # stays marked: its 503 says OUTCOME_UNKNOWN whatever ends it).
        committed = resolve_lost_commit(
            guard,  # type: ignore[arg-type]
            exc,
            fault,
            xid=xid,
            started=started,
            timeout=timeout,
            ask=self._ask,
            sleep=self._sleep,
        )
        watch.settled()
        if committed:
            # Applied: the commit succeeded. The connection it ran on is dead.
            note_committed_write()
            _retire(dbapi_connection, info)
            logger.info(
                "[COMMIT_RESOLVED] xid=%s status=committed after the COMMIT reply was lost",
                xid,
                extra={"outlast_event": "commit_resolved", "outlast_xid": xid},
            )
            return
        raise DatabaseUnavailable(
            f"COMMIT of transaction {xid} was not applied (the connection was lost and"
            " the server rolled it back); safe to retry",
            retry_after=float(getattr(guard, "retry_after", 0.0) or 1.0),
            fault=fault,
        ) from exc

    def _ask(self, command: _Ask) -> object:
        asker = _StatusAsker(self.engine)
        if not self.engine.dialect.is_async:
            return _ask(asker, command)  # in a thread, bounded by its timeout
        # SQLAlchemy's asyncio layer: this runs in its greenlet, where the
        # question must run too; every step of it is bounded by the hardening
        # (connect timeout, ping and statement deadlines).
        try:
            return asker.status(command.xid, timeout=command.timeout)
        except Exception as error:
            return error

    def _sleep(self, seconds: float) -> None:
        if not self.engine.dialect.is_async:
            import time

            time.sleep(seconds)
            return
        _await(asyncio.sleep(seconds))

    def _fallback_guard(self) -> Any:
        if self._resolver is None:
            from outlast._core.guard.guard import Guard

            self._resolver = Guard("commit", listeners=())
        return self._resolver


class _StatusAsker:
    """Asks ``pg_xact_status()`` on a fresh connection of the engine (what `_ask` calls)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        with self.engine.connect() as conn:
            row = conn.execute(_STATUS, {"xid": xid}).one()
            conn.rollback()
        return StatusReply(row[0], row[1])


def autocommit_write_lost(
    conn: Any, statement: str, error: BaseException, guard: FaultReporter | None
) -> None:
    """A write sent outside any transaction lost its answer: its outcome is unknown.

    In autocommit mode (``isolation_level="AUTOCOMMIT"``) each statement
    commits by itself, and no transaction id is read before it: when the
    connection dies or a deadline fires after a write statement was sent,
    nobody can tell whether it was applied. The current request is marked, so
    its 503 says ``OUTCOME_UNKNOWN`` rather than "not applied".
    """
    if _READ_ONLY.match(statement):
        return
    try:
        raw = conn.connection.dbapi_connection
        autocommit = bool(getattr(raw, "autocommit", False))
    except Exception:  # an invalidated or closed connection: nothing to tell
        return
    if not autocommit:
        return
    fault = guard.classify(error) if guard is not None else _classify(error)
    if fault is not None and fault.kind in _DEAD_LINK and fault.phase != "connect":
        note_outcome_unknown()


def _marker(dbapi_connection: PoolProxiedConnection, info: TransactionInfo) -> tuple[Any, Any]:
    cursor = dbapi_connection.cursor()
    try:
        # Only plain queries ran: an xid exists exactly when one of them wrote
        # (a function it called), and NULL proves nothing waits for COMMIT.
        # Otherwise the transaction's marker, which assigns one if needed.
        read_only = not (info.notify or info.wrote)
        cursor.execute(_READ_MARKER_SQL if read_only else MARKER_SQL)
        xid, started = _row(cursor.fetchone())
        if xid is None and (info.notify or info.wrote):
            # Nothing assigned an id yet, but the transaction may still change
            # something at COMMIT (a queued NOTIFY, a procedure): give it one,
            # so a lost COMMIT can be resolved rather than called harmless.
            cursor.execute(_ASSIGN_SQL)
            xid = _row(cursor.fetchone())[0]
    finally:
        cursor.close()
    return xid, started


def _row(row: Any) -> tuple[Any, ...]:
    if row is None:  # pragma: no cover - both queries always return one row
        raise RuntimeError("the transaction marker returned no row")
    return tuple(row)


def _retire(dbapi_connection: PoolProxiedConnection, info: TransactionInfo | None) -> None:
    """Never send anything on this connection again; the pool replaces it on next use."""
    if info is not None:
        info.dead = True
    try:
        dbapi_connection.invalidate(soft=True)
    except Exception:  # pragma: no cover - defensive
        logger.debug("soft invalidation failed", exc_info=True)


def _classify(exc: BaseException) -> Any:
    from outlast._core.faults.classify import classify

    return classify(exc)


def _retry_timeout(guard: Any) -> float | None:
    retry = getattr(guard, "retry", None)
    return getattr(retry, "timeout", None)


def _await(awaitable: Any) -> Any:
    from sqlalchemy.util import concurrency

    await_ = getattr(concurrency, "await_", None) or concurrency.await_only
    return await_(awaitable)
