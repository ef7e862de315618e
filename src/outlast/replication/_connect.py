"""Where replication code gets its database connection from.

A *source* is a DSN (libpq ``key=value`` or URL) or a function that returns
a DB-API connection (psycopg 3 or psycopg2). From a DSN, outlast's hardened
``connect`` is used (psycopg 3 when installed, else psycopg2): connect and
statement timeouts and TCP keepalives, so a check never hangs on a dead link.
Connections run in autocommit mode: a monitor must never sit idle inside a
transaction (that would hold back ``xmin`` and vacuum on the very server it
watches).

`Connection` keeps one connection between uses and drops it after any
database fault, so the next use reconnects.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from outlast import ConfigurationError, Hardening, classify, parse_dsn

__all__ = ["Connection", "Driver", "Source", "rows"]

T = TypeVar("T")
Source = str | Callable[[], Any]
Driver = Literal["auto", "psycopg", "psycopg2"]


def rows(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement on a DB-API connection; the rows it returned (none for DDL/DML)."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description is not None else []
    finally:
        cur.close()


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Connection:
    """One lazily opened, autocommit connection from `source`, reopened after a fault."""

    def __init__(
        self,
        source: Source,
        *,
        preset: str | Hardening = "default",
        driver: Driver = "auto",
    ) -> None:
        if isinstance(source, str):
            parse_dsn(source)  # a malformed DSN fails here, naming the problem
        elif not callable(source):
            raise ConfigurationError(
                "source must be a DSN string or a function returning a connection"
            )
        if driver not in ("auto", "psycopg", "psycopg2"):
            raise ConfigurationError(
                f"driver must be 'auto', 'psycopg' or 'psycopg2', not {driver!r}"
            )
        self._source = source
        self._preset = preset
        self._driver = driver
        self._conn: Any = None
        self._lock = threading.RLock()

    def _open(self) -> Any:
        source = self._source
        if not isinstance(source, str):
            conn = source()
        else:
            driver = self._driver
            if driver == "auto":
                driver = "psycopg" if _installed("psycopg") else "psycopg2"
            if not _installed(driver):
                raise ConfigurationError(
                    f"outlast.replication needs {driver} to connect from a DSN: "
                    f"pip install 'outlast[{driver}]'"
                )
            if driver == "psycopg":
                import outlast.psycopg

                return outlast.psycopg.connect(source, preset=self._preset, autocommit=True)
            import outlast.psycopg2

            conn = outlast.psycopg2.connect(source, preset=self._preset)
        if not getattr(conn, "autocommit", False):
            conn.autocommit = True
        return conn

    def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(connection)``; a database fault closes the connection and propagates."""
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            try:
                return fn(self._conn)
            except Exception as exc:
                if classify(exc) is not None:
                    self.close()
                raise

    def close(self) -> None:
        """Close the connection (the next `run` opens a new one)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
