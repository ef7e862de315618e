"""`Guard.transaction` on a Django database connection.

::

    from django.db import connection
    from outlast.django import runtime

    def add_lead(conn, lead_id, name):
        Lead.objects.create(id=lead_id, name=name)    # the ORM, as usual

    runtime().transaction(connection, add_lead, lead_id, name)

The source is ``django.db.connection`` or ``django.db.connections[alias]``;
``fn`` receives that connection, and every ORM query inside it (on this
thread, that alias) belongs to the transaction: autocommit is turned off for
the attempt and COMMIT is sent by outlast, which reads the transaction's id
first so that a lost COMMIT is resolved with ``pg_xact_status()`` and never
sent twice. ``transaction.atomic()`` blocks inside ``fn`` become savepoints.
``guard.transaction`` itself cannot run inside ``atomic()`` (the retried unit
must be its own transaction); ``runtime().transaction`` can: there it runs
``fn`` once in a savepoint of the enclosing block, whose COMMIT the
middleware guards (`outlast.django._commit`). PostgreSQL only: on SQLite or
any other backend both raise `ConfigurationError` at once.

Inside a request the Django middleware bounds the ORM's queries by the
request budget; this adapter bounds the rest the same way: COMMIT (which
Django does not send through its query hooks) and the ``pg_xact_status``
question, which runs on a connection of its own in a helper thread so that a
dead link cannot hold the request past its budget.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.connection import ConnectionProxy

from outlast._core.faults.errors import ConfigurationError
from outlast._core.timing.budget import budget_remaining
from outlast._core.transactions.adapters import (
    MARKER_SQL,
    StatusReply,
    connection_gone,
    register_adapter,
    status_sql,
)
from outlast._core.web.calls import budget_exceeded
from outlast.django._commit import MARGIN, bounded

__all__ = ["DjangoAdapter", "alias_of", "require_postgresql"]

_STATUS = status_sql("%s")


def alias_of(source: Any) -> str:
    """The database alias of ``django.db.connection`` or ``connections[alias]``."""
    if isinstance(source, ConnectionProxy):
        return str(source._alias)
    if isinstance(source, BaseDatabaseWrapper):
        return str(source.alias)
    raise TypeError(
        "pass django.db.connection or django.db.connections[alias],"
        f" not a {type(source).__qualname__}"
    )


def require_postgresql(conn: Any, what: str) -> None:
    """Raise `ConfigurationError` unless `conn` is a PostgreSQL connection."""
    vendor = getattr(conn, "vendor", None)
    if vendor != "postgresql":
        raise ConfigurationError(
            f"{what} needs PostgreSQL, but the database {conn.alias!r} is {vendor}:"
            " outlast resolves a lost COMMIT with PostgreSQL's pg_xact_status(). Use"
            " transaction.atomic() there (or run these tests on PostgreSQL)"
        )


def _is_django_connection(source: object) -> bool:
    return isinstance(source, BaseDatabaseWrapper | ConnectionProxy)


class DjangoAdapter:
    """``fn(connection)`` with this thread's Django connection in a transaction."""

    def __init__(self, source: Any) -> None:
        self.alias = alias_of(source)
        require_postgresql(connections[self.alias], "Guard.transaction() on a Django connection")

    def open(self) -> Any:
        conn = connections[self.alias]  # this thread's, resolved per attempt
        if conn.in_atomic_block:
            raise ConfigurationError(
                "Guard.transaction() on a Django connection cannot run inside"
                " transaction.atomic() (ATOMIC_REQUESTS, TestCase): the transaction it"
                " retries must be its own. Use outlast.django.runtime().transaction(),"
                " which runs fn in a savepoint of the enclosing block there"
            )
        conn.ensure_connection()
        return conn

    def begin(self, handle: Any) -> Any:
        handle.set_autocommit(False)
        return handle

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        with handle.cursor() as cursor:
            cursor.execute(MARKER_SQL)
            row = cursor.fetchone()
        return row[0], row[1]

    def commit(self, handle: Any) -> None:
        # Django's own commit (not the middleware's guard on this connection:
        # the transaction machine resolves this COMMIT itself), bounded by the
        # budget, since Django sends COMMIT outside its execute_wrapper hooks.
        bounded(handle, lambda: type(handle).commit(handle))

    def rollback(self, handle: Any) -> None:
        handle.rollback()

    def lost(self, handle: Any) -> bool:
        return connection_gone(handle.connection)  # None: Django closed it

    def close(self, handle: Any, *, discard: bool) -> None:
        if handle.in_atomic_block or handle.closed_in_transaction:
            # The connection died inside one of fn's atomic() blocks: Django
            # keeps its transaction state (in_atomic_block, closed in a
            # transaction) for an outermost atomic() to clear, and here the
            # outermost transaction was this attempt's, now over. Left as is,
            # every later transaction on this thread would be refused.
            handle.in_atomic_block = False
            handle.closed_in_transaction = False
            discard = True
        if discard:
            handle.close()  # the next ensure_connection() starts afresh, autocommit on
        elif not handle.get_autocommit():
            handle.set_autocommit(True)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        remaining = budget_remaining()
        if remaining is None:
            return self._ask(xid)
        limit = min(timeout, remaining - MARGIN)
        if limit <= 0:
            raise budget_exceeded(None)
        answer: list[StatusReply | BaseException] = []

        def ask() -> None:
            try:
                answer.append(self._ask(xid))
            except BaseException as exc:  # handed to the caller's thread
                answer.append(exc)

        helper = threading.Thread(target=ask, name="outlast-xact-status", daemon=True)
        helper.start()
        helper.join(limit)
        if not answer:  # still connecting or waiting: it finishes on its own
            raise budget_exceeded(None)
        reply = answer[0]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _ask(self, xid: str) -> StatusReply:
        # A connection of its own: the request's may be the one that died.
        conn = connections.create_connection(self.alias)
        try:
            with conn.cursor() as cursor:
                cursor.execute(_STATUS, [xid])
                row = cursor.fetchone()
        finally:
            conn.close()
        return StatusReply(row[0], row[1])


register_adapter(_is_django_connection, DjangoAdapter)
