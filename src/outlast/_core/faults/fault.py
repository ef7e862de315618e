"""The fault model: one value that describes any database failure.

`classify()` (in `_classify`) turns driver exceptions into a `Fault`; everything
else in outlast (retry rules, the breaker, web integrations) looks only at the
`Fault`, never at driver exception classes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = ["Fault", "FaultKind", "Phase"]

Phase = Literal["connect", "statement", "commit", "unknown"]


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
