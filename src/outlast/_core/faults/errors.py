"""The exceptions outlast raises.

Every one of them derives from `OutlastError`::

    OutlastError
     ├── DatabaseUnavailable        the breaker is open or retries are exhausted (-> 503)
     │    ├── DatabaseNotReady      wait_for_database() gave up at start-up
     │    └── RequestBudgetExceeded a request used up its budget waiting for the
     │                              database (-> 503; the request's timeout, not an outage)
     ├── CommitOutcomeUnknown       COMMIT was in flight when the connection died and
     │                              pg_xact_status() could not tell what happened
     └── ConfigurationError (also ValueError)   a bad option or a malformed DSN

Driver exceptions that are not retried propagate unchanged; outlast exceptions
keep the driver exception as ``__cause__``.
"""

from __future__ import annotations

from .fault import Fault

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseNotReady",
    "DatabaseUnavailable",
    "OutlastError",
    "RequestBudgetExceeded",
]


class OutlastError(Exception):
    """Root of every exception outlast raises."""


class DatabaseUnavailable(OutlastError):
    """The database is unavailable: the breaker is open or retries ran out.

    `retry_after` is how many seconds a client should wait before trying again
    (web integrations copy it into the ``Retry-After`` header); `fault` is the
    last classified fault, if any.
    """

    # Slots, not the instance __dict__: an open breaker builds one of these per
    # rejected call, and three slot stores cost less than creating a dict.
    # (Exceptions keep their __dict__ for any other attribute.)
    __slots__ = ("fault", "guard", "retry_after")

    retry_after: float
    fault: Fault | None
    guard: str | None

    def __init__(
        self,
        message: str = "database temporarily unavailable",
        *,
        retry_after: float = 1.0,
        fault: Fault | None = None,
        guard: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.fault = fault
        self.guard = guard

    def __reduce__(self) -> tuple[object, ...]:
        # The class travels too, so a pickled subclass (DatabaseNotReady...) stays one.
        state = (type(self), str(self), self.retry_after, self.fault, self.guard)
        return (_rebuild_unavailable, state)


def _rebuild_unavailable(
    cls: type[DatabaseUnavailable],
    message: str,
    retry_after: float,
    fault: Fault | None,
    guard: str | None,
) -> DatabaseUnavailable:
    return cls(message, retry_after=retry_after, fault=fault, guard=guard)


_new_exception = BaseException.__new__


def fast_unavailable(
    message: str, retry_after: float, fault: Fault | None, guard: str | None
) -> DatabaseUnavailable:
    """``DatabaseUnavailable(message, retry_after=..., fault=..., guard=...)``, cheaper.

    An open breaker builds one per rejected call, and the keyword-argument
    ``__init__`` (with its ``super()`` call) is most of what a rejection costs.
    ``BaseException.__new__`` already stores ``args``, so the result is the
    same object ``__init__`` would make.
    """
    error: DatabaseUnavailable = _new_exception(DatabaseUnavailable, message)
    error.retry_after = retry_after
    error.fault = fault
    error.guard = guard
    return error


class DatabaseNotReady(DatabaseUnavailable):
    """`wait_for_database()` gave up: the database did not come up in time."""


class RequestBudgetExceeded(DatabaseUnavailable):
    """The request used up its budget while waiting for the database (-> 503).

    It is the request's timeout, not evidence about the database: a Guard
    never counts it as a failure.
    """


class CommitOutcomeUnknown(OutlastError):
    """COMMIT was sent, the connection died, and the outcome could not be resolved.

    `xid` is the transaction id read before COMMIT (if it could be read), so an
    operator can check ``pg_xact_status(xid)`` later.
    """

    def __init__(self, message: str, *, xid: str | None = None, fault: Fault | None = None) -> None:
        super().__init__(message)
        self.xid = xid
        self.fault = fault


class ConfigurationError(OutlastError, ValueError):
    """An invalid option or a malformed DSN. Never contains a password."""
