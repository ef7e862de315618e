"""The exceptions outlast raises.

Every one of them derives from `OutlastError`::

    OutlastError
     ├── DatabaseUnavailable        the breaker is open or retries are exhausted (-> 503)
     │    ├── DatabaseNotReady      wait_for_database() gave up at start-up
     │    └── RequestBudgetExceeded a web request used up its budget waiting for the
     │                              database (-> 503; defined with the request budgets)
     ├── CommitOutcomeUnknown       COMMIT was in flight when the connection died and
     │                              pg_xact_status() could not tell what happened
     └── ConfigurationError (also ValueError)   a bad option or a malformed DSN

Driver exceptions that are not retried propagate unchanged; outlast exceptions
keep the driver exception as ``__cause__``.
"""

from __future__ import annotations

from ._fault import Fault

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "DatabaseNotReady",
    "DatabaseUnavailable",
    "OutlastError",
]


class OutlastError(Exception):
    """Root of every exception outlast raises."""


class DatabaseUnavailable(OutlastError):
    """The database is unavailable: the breaker is open or retries ran out.

    `retry_after` is how many seconds a client should wait before trying again
    (web integrations copy it into the ``Retry-After`` header); `fault` is the
    last classified fault, if any.
    """

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
        return (_rebuild_unavailable, (str(self), self.retry_after, self.fault, self.guard))


def _rebuild_unavailable(
    message: str, retry_after: float, fault: Fault | None, guard: str | None
) -> DatabaseUnavailable:
    return DatabaseUnavailable(message, retry_after=retry_after, fault=fault, guard=guard)


class DatabaseNotReady(DatabaseUnavailable):
    """`wait_for_database()` gave up: the database did not come up in time."""


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
