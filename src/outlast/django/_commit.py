"""The lost-COMMIT guarantee for Django's own commits, and unknown autocommit writes.

Inside a request served through `OutlastMiddleware`, every COMMIT that Django
sends on a PostgreSQL connection -- ``ATOMIC_REQUESTS``, ``transaction.atomic()``
blocks, ``Model.save()`` of a model with parents -- goes through `guard_commits`:

1. if a transaction is open, the transaction's xid and the server's start time
   are read first (`MARKER_SQL`, on the driver connection, so it does not show
   up in ``connection.queries`` or ``assertNumQueries``);
2. COMMIT runs under the rest of the request budget (a socket deadline: Django
   does not send COMMIT through its query hooks);
3. if the connection dies while COMMIT is in flight, nobody knows whether it
   committed. The request is marked (`CommitWatch`: whatever fails from now
   on answers ``OUTCOME_UNKNOWN``) and ``pg_xact_status(xid)`` is asked on a
   fresh connection, within the budget:

   - ``committed``: COMMIT returns normally. The fresh connection that gave the
     answer replaces the dead one, so Django turns autocommit back on and runs
     its ``on_commit`` hooks as after any commit; the view's response goes out;
   - ``aborted``: the original error is raised: nothing was written, so the 503
     says ``SERVICE_UNAVAILABLE``, which is true;
   - no xid (the transaction wrote nothing, e.g. a read under
     ``ATOMIC_REQUESTS``): the outcome does not matter; COMMIT returns and the
     response stands;
   - still unknown when the budget runs out: `CommitOutcomeUnknown` (503
     ``OUTCOME_UNKNOWN``), and the ``on_commit`` hooks are dropped.

Statements sent in autocommit mode (a plain ``Model.save()`` or
``serializer.save()`` without ``ATOMIC_REQUESTS``) have no COMMIT to resolve:
each one commits by itself, with an xid nobody could read beforehand. When the
connection dies after such a statement was sent, and it was not a read
(`_reads_only`), `note_statement_failure` marks the request, so the 503 says
``OUTCOME_UNKNOWN``: the write may be stored. Inside a transaction the server
rolls back on a lost connection, so "not applied" stays true there.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from outlast._core.connections.socket_deadline import connection_fileno, socket_deadline
from outlast._core.faults.errors import CommitOutcomeUnknown
from outlast._core.faults.fault import FaultKind
from outlast._core.faults.redact import redact
from outlast._core.timing.budget import CommitWatch, budget_remaining
from outlast._core.transactions.adapters import MARKER_SQL, StatusReply, status_sql
from outlast._core.transactions.machine import resolve_commit
from outlast.django._routes import current_flags

if TYPE_CHECKING:
    from outlast._core.guard.guard import Guard

__all__ = [
    "MARGIN",
    "StatusAsker",
    "bounded",
    "guard_commits",
    "in_transaction",
    "note_statement_failure",
]

logger = logging.getLogger("outlast")

T = TypeVar("T")

#: Seconds kept back so the 503 goes out before the budget ends.
MARGIN = 0.2
_STATUS = status_sql("%s")
_INTRANS = 2  # libpq's PQTRANS_INTRANS (psycopg 3 and psycopg2 alike)
# Faults that, raised by COMMIT itself, leave its outcome unknown (as in the
# transaction machine): a server that *answered* with an error rolled back.
_UNKNOWN_AT_COMMIT = frozenset(
    {FaultKind.COMMIT_UNKNOWN, FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.TIMEOUT}
)


def in_transaction(raw: Any) -> bool:
    """True when the driver connection has a transaction open (and not failed)."""
    info = getattr(raw, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is None:
        getter = getattr(raw, "get_transaction_status", None)
        status = getter() if getter is not None else _INTRANS
    return int(status) == _INTRANS


def bounded(conn: Any, fn: Callable[[], T]) -> T:
    """Run `fn` (a COMMIT, a marker query) under the rest of the request budget."""
    remaining = budget_remaining()
    raw = getattr(conn, "connection", None)
    fileno = connection_fileno(raw) if remaining is not None and raw is not None else None
    if remaining is None or fileno is None:
        return fn()
    token = socket_deadline.arm(fileno, max(remaining - MARGIN, 0.05))
    try:
        return fn()
    finally:
        socket_deadline.disarm(token)


def _marker(conn: Any) -> tuple[str | None, str | None]:
    def read() -> tuple[str | None, str | None]:
        with conn.wrap_database_errors, conn.connection.cursor() as cursor:
            cursor.execute(MARKER_SQL)
            row = cursor.fetchone()
        return row[0], row[1]

    return bounded(conn, read)


class StatusAsker:
    """Asks ``pg_xact_status`` for one alias on fresh connections (a transaction adapter's
    `status`). Keeps the driver connection of the last answer, for `take`."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._lock = threading.Lock()
        self._spare: Any = None
        self._done = False

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        from django.db import connections

        # A connection of its own (the request's died), made in the asking
        # thread; only its driver connection is kept.
        helper = connections.create_connection(self.alias)
        try:
            with helper.cursor() as cursor:
                cursor.execute(_STATUS, [xid])
                row = cursor.fetchone()
        except BaseException:
            helper.close()
            raise
        raw, helper.connection = helper.connection, None
        with self._lock:
            stale, self._spare = (raw, None) if self._done else (self._spare, raw)
        _close_quietly(stale)
        return StatusReply(row[0], row[1])

    def take(self) -> Any:
        """The driver connection that gave the last answer (None if none); closes the rest."""
        with self._lock:
            raw, self._spare, self._done = self._spare, None, True
        return raw


def _close_quietly(raw: Any) -> None:
    if raw is not None:
        try:
            raw.close()
        except Exception:
            logger.debug("closing a dead connection failed", exc_info=True)


def _abandon(conn: Any) -> None:
    """The connection died in a COMMIT whose outcome stays unknown: drop it.

    ``closed_in_transaction`` makes ``atomic()`` forget the connection on its
    way out instead of turning autocommit back on over a dead socket; the
    middleware clears what is left at the end of the request.
    """
    _close_quietly(conn.connection)
    conn.run_on_commit = []
    conn.closed_in_transaction = True


def _drop_after_harmless_commit(conn: Any) -> None:
    """A COMMIT that wrote nothing lost its reply: go on as after a commit.

    The dead connection is dropped (Django connects again when it needs
    one) and the ``on_commit`` hooks run, as they would have.
    """
    _close_quietly(conn.connection)
    conn.connection = None
    conn.closed_in_transaction = True  # atomic() forgets the connection on its way out
    conn.errors_occurred = False
    conn.run_and_clear_commit_hooks()


def _adopt(conn: Any, raw: Any) -> bool:
    """After a resolved COMMIT: continue on the connection that gave the answer."""
    dead = conn.connection
    try:
        conn.connection = raw
        conn._set_autocommit(conn.autocommit)
    except Exception:
        logger.debug("the connection that resolved a COMMIT could not be adopted", exc_info=True)
        conn.connection = dead
        _close_quietly(raw)
        return False
    _close_quietly(dead)
    # What Django's commit() does after a successful _commit().
    conn.errors_occurred = False
    conn.run_commit_hooks_on_set_autocommit_on = True
    return True


def _guarded_commit(conn: Any, guard_of: Callable[[], Guard], op: Callable[[], str]) -> Any:
    original = type(conn).commit

    def commit() -> None:
        raw = conn.connection
        if raw is None or not in_transaction(raw):
            original(conn)  # nothing open (or already failed): nothing to lose
            return
        xid, started = _marker(conn)
        watch = CommitWatch()
        watch.sent()
        try:
            bounded(conn, lambda: original(conn))
        except Exception as exc:
            guard = guard_of()
            fault = guard.classify(exc, during_commit=True)
            flags = current_flags()
            if flags is not None and fault is not None:
                flags.faulted = True
            if fault is None or fault.kind not in _UNKNOWN_AT_COMMIT:
                watch.settled()  # the server answered: it rolled back
                raise
            guard.record_failure(exc, op=op(), fault=fault)
            if xid is None:
                # The transaction wrote nothing: committed or not, the database
                # is unchanged and the response stands (a read under
                # ATOMIC_REQUESTS). The dead connection is dropped.
                watch.settled()
                _drop_after_harmless_commit(conn)
                return
            asker = StatusAsker(conn.alias)
            remaining = budget_remaining()
            try:
                committed = resolve_commit(
                    guard,
                    asker,
                    xid=xid,
                    started=started,
                    error=exc,
                    fault=fault,
                    op=op(),
                    timeout=None if remaining is None else max(remaining - MARGIN, 0.0),
                )
            except BaseException as unknown:
                _close_quietly(asker.take())
                _abandon(conn)  # the request stays marked: OUTCOME_UNKNOWN
                logger.warning(
                    "[COMMIT_UNKNOWN] route=%s xid=%s why=%s",
                    op(),
                    xid,
                    redact(str(unknown)),
                    extra={"outlast_route": op(), "outlast_xid": xid},
                )
                raise
            spare = asker.take()
            if not committed:
                _close_quietly(spare)
                watch.settled()
                raise  # aborted: nothing was written
            if spare is None or not _adopt(conn, spare):
                _abandon(conn)
                raise CommitOutcomeUnknown(
                    f"transaction {xid} committed, but its connection could not be replaced",
                    xid=xid,
                    fault=fault,
                ) from exc
            watch.settled()
            logger.info(
                "[COMMIT_RESOLVED] route=%s xid=%s status=committed",
                op(),
                xid,
                extra={"outlast_route": op(), "outlast_xid": xid},
            )
            return
        watch.settled()

    return commit


@contextlib.contextmanager
def guard_commits(
    conn: Any, guard_of: Callable[[], Guard], op: Callable[[], str]
) -> Iterator[None]:
    """Route this thread's Django connection's COMMITs through the guard for a request."""
    if getattr(conn, "vendor", None) != "postgresql" or "commit" in vars(conn):
        yield  # not PostgreSQL (no pg_xact_status), or already guarded
        return
    conn.commit = _guarded_commit(conn, guard_of, op)
    try:
        yield
    finally:
        vars(conn).pop("commit", None)
        if conn.closed_in_transaction and not conn.in_atomic_block:
            # A COMMIT outside atomic() was abandoned: start afresh next time.
            conn.connection = None
            conn.closed_in_transaction = False


# --------------------------------------------------------------------------- autocommit writes

_COMMENT = re.compile(r"\s*(?:--[^\n]*\n|/\*.*?\*/|\()*\s*", re.S)
_FIRST_WORD = re.compile(r"[A-Za-z]+")
_READS = frozenset(
    {"SELECT", "SHOW", "EXPLAIN", "VALUES", "TABLE", "SET", "RESET", "FETCH", "BEGIN", "START"}
)
_WRITING_CTE = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.I)


def _reads_only(sql: str) -> bool:
    """Whether a statement is a read (its loss cannot leave a write behind).

    ``SELECT`` counts as a read (a function it calls could write; the ORM's
    never do). ``WITH`` is a read unless it holds a data-modifying statement;
    ``EXPLAIN ANALYZE`` runs its statement, so it is not.
    """
    text = sql[_COMMENT.match(sql).end() :] if sql else ""  # type: ignore[union-attr]
    word = _FIRST_WORD.match(text)
    if word is None:
        return False
    first = word.group(0).upper()
    if first == "WITH":
        return _WRITING_CTE.search(text) is None
    if first == "EXPLAIN":
        return "ANALYZE" not in text[:200].upper()
    return first in _READS


def note_statement_failure(conn: Any, sql: Any, exc: BaseException, guard: Guard) -> None:
    """After a statement failed: if it was a write sent in autocommit mode and the
    connection died with it, mark the request's outcome unknown."""
    if conn.in_atomic_block or not conn.autocommit:
        return  # inside a transaction: a lost connection rolls it back
    if isinstance(sql, str) and _reads_only(sql):
        return
    fault = guard.classify(exc)
    if fault is None or fault.kind is not FaultKind.UNAVAILABLE or fault.phase == "connect":
        return  # the server answered (it did not apply it), or nothing was sent
    CommitWatch().sent()  # never settled: this request's outcome stays unknown
