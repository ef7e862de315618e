"""The exceptions `outlast.migrate` raises, under `outlast.OutlastError`::

    OutlastError
     ├── MigrationError              something kept the schema from reaching its target
     │    ├── MigrationTimeout       the lock or the target was not reached within `wait`
     │    │                          (names the lock's holder and what is pending)
     │    ├── MigrationLockLost      the lock's session died while this process held it;
     │    │                          the step in flight was rolled back or fenced off
     │    ├── MigrationFailed        a migration raised (the error is ``__cause__``)
     │    └── LockNotSupported       (also ConfigurationError) the lock DSN goes through a
     │                               transaction pooler, where a session lock cannot live
     └── ConfigurationError          a bad option, a malformed DSN, a broken migrations folder

No message contains a password: DSNs are never formatted into them and driver
messages pass through `outlast.redact`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from outlast import ConfigurationError, OutlastError

if TYPE_CHECKING:
    from ._holder import Holder
    from ._state import SchemaState

__all__ = [
    "LockNotSupported",
    "MigrationError",
    "MigrationFailed",
    "MigrationLockLost",
    "MigrationTimeout",
]


class MigrationError(OutlastError):
    """Something kept the schema from reaching its target."""


class MigrationTimeout(MigrationError):
    """The lock or the target schema was not reached within the wait.

    `holder` is the session that held the lock when the wait ended (None when
    nobody did, e.g. while waiting for another role to migrate), `state` the
    last schema state read (None when the database never answered) and
    `reason` the last reason for waiting (``lock_held``, ``pending``, or a
    fault reason such as ``connection_refused``).
    """

    def __init__(
        self,
        message: str,
        *,
        holder: Holder | None = None,
        state: SchemaState | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(message)
        self.holder = holder
        self.state = state
        self.reason = reason


class MigrationLockLost(MigrationError):
    """The session holding the migration lock died or lost the lock mid-migration."""


class MigrationFailed(MigrationError):
    """A migration raised; transactional steps were rolled back (see ``__cause__``)."""

    def __init__(self, message: str, *, reason: str = "", sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


class LockNotSupported(ConfigurationError, MigrationError):
    """The lock DSN reaches the database through a transaction pooler.

    A session advisory lock taken through PgBouncer in transaction mode stays on
    whichever server connection ran the statement (rails#22092, prisma#12999):
    use a direct DSN for the lock (``lock_dsn=`` / ``--lock-dsn``) or the lease
    mode (``lock="lease"``) in every process.
    """
