"""The fault model: one value that describes any database failure.

`classify()` (in `_classify`) turns driver exceptions into a `Fault`; everything
else in outlast (retry rules, the breaker, web integrations) looks only at the
`Fault`, never at driver exception classes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CLIENT_REJECTED_REASONS",
    "CONFIG_REASONS",
    "FOREIGN_REASONS",
    "NO_EVIDENCE_REASONS",
    "Fault",
    "FaultKind",
    "Phase",
]

Phase = Literal["connect", "statement", "commit", "unknown"]

CONFIG_REASONS = frozenset({"bad_dsn", "invalid_connection_option"})
"""Reasons for a connection that was never attempted: the DSN or the options are
wrong. PERMANENT, and they say nothing about the database's health."""

CLIENT_REJECTED_REASONS = frozenset({"pool_closed", "too_many_parameters"})
"""Reasons for a statement the client refused to send: the pool it was asked
for is closed, or the driver rejects the statement itself (more bind
parameters than the protocol allows). PERMANENT bugs that never reached the
server."""

NO_EVIDENCE_REASONS = (
    CONFIG_REASONS | CLIENT_REJECTED_REASONS | {"client_timeout", "request_budget_exceeded"}
)
"""Reasons that never prove the database is up: nothing was sent (a malformed
DSN, a closed pool, a statement the driver refused), or the client stopped
waiting before the server answered (its own timeout, the request's budget).
Only an answer from the server is evidence that it is up. (Nor are they
evidence that it is down: the Guard never counts them.)"""

FOREIGN_REASONS = frozenset({"remote_unavailable"})
"""Reasons for a failure of *another* server that this database reached for
(postgres_fdw, dblink): the database itself answered, so the Guard takes the
error as proof that it is up and never counts it as this database's outage.
UNAVAILABLE and transient all the same (the remote may come back), with
phase ``"statement"``: the statement was sent, so only idempotent work or a
whole transaction is tried again."""


class FaultKind(enum.Enum):
    """What kind of failure a database error is (see the fault table in the README)."""

    UNAVAILABLE = "unavailable"
    """The database cannot be reached or refuses work for now."""
    CONFLICT = "conflict"
    """The database is up; the transaction lost a race (retry the whole unit)."""
    READ_ONLY = "read_only"
    """A write reached a read-only server (typically a demoted primary after failover)."""
    TIMEOUT = "timeout"
    """A statement or idle-transaction timeout fired on the server."""
    COMMIT_UNKNOWN = "commit_unknown"
    """The connection died while COMMIT was in flight: the outcome is unknown."""
    PERMANENT = "permanent"
    """A bug or configuration error; retrying cannot help."""

    def __repr__(self) -> str:
        return f"FaultKind.{self.name}"


@dataclass(frozen=True, slots=True)
class Fault:
    """A classified database failure.

    `message` is always redacted: it never carries a password or bound SQL
    parameters, so it is safe to log and to show in health output.
    """

    kind: FaultKind
    reason: str
    sqlstate: str | None
    phase: Phase
    transient: bool
    message: str

    @property
    def before_statement(self) -> bool:
        """True when the statement cannot have reached the server."""
        return self.phase == "connect"
