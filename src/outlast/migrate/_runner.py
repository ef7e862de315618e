"""What a migration runner is, and what the lock hands it when it may run.

A runner knows one migration tool: it reads the schema's state without
taking any lock (`Runner.state`, run by every process on every poll) and
applies what is pending (`Runner.apply`, run only by the lock's holder, on a
connection of its own). The three shipped runners are `AlembicRunner`,
`DjangoRunner` and `SqlRunner`; anything with these methods works.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from outlast import parse_dsn

from ._session import Rows
from ._state import SchemaState

__all__ = ["ApplyContext", "Reader", "Runner"]

logger = logging.getLogger("outlast.migrate")


class Reader(Protocol):
    """The lock session's read access for state checks (a short transaction per call)."""

    def query(self, sql: Any, params: Any = None) -> Rows:
        """Rows of one read; gives up quickly instead of queueing behind DDL locks."""
        ...


@runtime_checkable
class Runner(Protocol):
    """A migration tool that outlast can run exactly once across many processes."""

    kind: str

    def describe(self) -> str:
        """A short name for logs: ``alembic alembic.ini``, ``sql migrations/``."""
        ...

    def default_dsn(self) -> str | None:
        """The database the tool is configured for (a libpq DSN or URL), if it knows one."""
        ...

    def state(self, reader: Reader) -> SchemaState:
        """Where the schema is and what is pending, without taking any lock."""
        ...

    def apply(self, ctx: ApplyContext) -> None:
        """Apply what is pending (the caller holds the lock and reads the state afterwards)."""
        ...

    def close(self) -> None:
        """Release what the runner holds (connections it keeps for state checks)."""
        ...


@dataclass
class ApplyContext:
    """What the lock's holder gives a runner for one `Runner.apply`.

    - `dsn`: where to run the DDL, on a new connection of the runner's own;
    - `application_name`: the tag that connection must carry
      (``outlast-migrate run <key> <host>:<pid>``): a later leader terminates
      sessions with this tag once this process's lock is gone;
    - `connect_kwargs()`: libpq keywords for that connection (the tag, TCP
      keepalives, ``lock_timeout`` / ``statement_timeout`` as startup options
      — set only now that the lock is held — and no server-side prepared
      statements behind a pooler);
    - `check()`: raises `MigrationLockLost` once the heartbeat found the lock
      gone; runners call it before every statement (a local flag, no query);
    - `watch(fileno)`: when the lock is lost the socket is shut down, so a
      statement blocked on a frozen link fails at once; returns the undo;
    - `progress(message)`: a progress line for the log.
    """

    dsn: str
    application_name: str
    server_settings: dict[str, str]
    pooled: bool
    check: Callable[[], None]
    progress: Callable[[str], None]
    keepalive_idle: int = 5
    connect_timeout: float = 5.0
    _watch: Callable[[int], Callable[[], None]] | None = field(default=None, repr=False)
    statements: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connect_kwargs(self) -> dict[str, Any]:
        """Keywords for ``psycopg.connect(ctx.dsn, **ctx.connect_kwargs())``."""
        kwargs: dict[str, Any] = {
            "application_name": self.application_name,
            "connect_timeout": max(2, round(self.connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": self.keepalive_idle,
            "keepalives_interval": max(1, self.keepalive_idle // 2),
            "keepalives_count": 3,
        }
        if self.pooled:
            kwargs["prepare_threshold"] = None
        elif self.server_settings:
            ours = " ".join(f"-c {k}={v}" for k, v in self.server_settings.items())
            given = parse_dsn(self.dsn).get("options")
            kwargs["options"] = f"{given} {ours}" if given else ours
        return kwargs

    def before_statement(self) -> None:
        """Count one statement and refuse it if the lock is gone (the per-statement fence)."""
        with self._count_lock:
            self.statements += 1
        self.check()

    def watch(self, fileno: int) -> Callable[[], None]:
        """Shut `fileno` down if the lock is lost; returns the function that stops watching."""
        if self._watch is None:
            return lambda: None
        return self._watch(fileno)
