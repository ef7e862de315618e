"""Plain SQL files, applied in order, recorded in a version table.

A folder of files named ``<number>_<name>.sql`` (``0001_create_leads.sql``,
``0002_add_email.sql``...), applied in numeric order. Each file runs in one
transaction together with the row that records it in the version table
(``outlast_schema_migrations`` by default): a leader killed mid-file leaves
neither half of it nor its record behind.

A file containing the line ``-- outlast:no-transaction`` runs outside a
transaction, one statement at a time (``CREATE INDEX CONCURRENTLY`` needs
that); it is recorded after its last statement succeeded. Such a file can be
interrupted half-way, so write it to be re-runnable (``IF NOT EXISTS``, and
``DROP INDEX CONCURRENTLY IF EXISTS`` before re-creating an index a failed
build left ``INVALID``).

A file whose content changed after it was applied is reported with a warning
(its checksum is recorded), never re-run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outlast import ConfigurationError

from ._runner import ApplyContext, Reader
from ._sqlsplit import split_statements
from ._state import SchemaState

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as psql

__all__ = ["SqlFile", "SqlRunner", "read_folder"]

logger = logging.getLogger("outlast.migrate")

DEFAULT_TABLE = "outlast_schema_migrations"
_NAME = re.compile(r"^(?P<version>\d+)(?:[_\-.](?P<name>.+))?\.sql$", re.IGNORECASE)
_NO_TRANSACTION = re.compile(r"^\s*--\s*outlast:no-transaction\s*$", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class SqlFile:
    """One migration file: its version, name, text, checksum and transaction mode."""

    version: str
    name: str
    path: Path
    text: str
    checksum: str
    transactional: bool


def read_folder(directory: Path) -> tuple[SqlFile, ...]:
    """The migration files of `directory`, ordered; ConfigurationError for a broken folder."""
    if not directory.is_dir():
        raise ConfigurationError(f"no migrations folder at {str(directory)!r}")
    files: list[tuple[int, SqlFile]] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() != ".sql":
            continue
        match = _NAME.match(path.name)
        if match is None:
            raise ConfigurationError(
                f"migration file {path.name!r} must be named <number>_<name>.sql"
            )
        number = int(match["version"])
        if number in seen:
            raise ConfigurationError(
                f"migration files {seen[number]!r} and {path.name!r} have the same number"
            )
        seen[number] = path.name
        text = path.read_text(encoding="utf-8")
        normalized = text.replace("\r\n", "\n")
        files.append(
            (
                number,
                SqlFile(
                    version=match["version"],
                    name=match["name"] or "",
                    path=path,
                    text=text,
                    checksum=hashlib.sha256(normalized.encode()).hexdigest(),
                    transactional=_NO_TRANSACTION.search(text) is None,
                ),
            )
        )
    files.sort(key=lambda item: item[0])
    return tuple(f for _, f in files)


class SqlRunner:
    """Ordered ``.sql`` files with a version table (see the module docstring).

    `directory`: the folder. `table`: the version table (``name`` or
    ``schema.name``). `dsn`: the database, if the runner should know one
    (``outlast.migrate.run`` takes it too).
    """

    kind = "sql"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        table: str = DEFAULT_TABLE,
        dsn: str | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.files = read_folder(self.directory)
        parts = table.split(".")
        if not 1 <= len(parts) <= 2 or not all(parts):
            raise ConfigurationError(f"table must be 'table' or 'schema.table', not {table!r}")
        self.table = table
        self._parts = tuple(parts)
        self._dsn = dsn
        self._warned: set[str] = set()

    def _ident(self) -> psql.Composable:
        from psycopg import sql

        return sql.Identifier(*self._parts)

    def _qualified(self) -> str:
        return ".".join('"' + p.replace('"', '""') + '"' for p in self._parts)

    def describe(self) -> str:
        """``sql <folder> (<n> files)``."""
        return f"sql {self.directory} ({len(self.files)} files)"

    def default_dsn(self) -> str | None:
        """The `dsn` given to the runner, if any."""
        return self._dsn

    def _applied(self, rows: list[tuple[Any, ...]]) -> dict[str, str]:
        return {str(version): str(checksum) for version, checksum in rows}

    def state(self, reader: Reader) -> SchemaState:
        """Files not in the version table are pending; versions with no file are unknown."""
        exists = reader.query("SELECT to_regclass(%s) IS NOT NULL", (self._qualified(),))
        applied: dict[str, str] = {}
        if exists and exists[0][0]:
            from psycopg import sql

            rows = reader.query(sql.SQL("SELECT version, checksum FROM {}").format(self._ident()))
            applied = self._applied(rows)
        return self._compare(applied)

    def _compare(self, applied: dict[str, str]) -> SchemaState:
        known = {f.version: f for f in self.files}
        for version, checksum in applied.items():
            f = known.get(version)
            if f is not None and f.checksum != checksum and version not in self._warned:
                self._warned.add(version)
                logger.warning(
                    "[MIGRATION] changed file=%s: applied with another content (checksum"
                    " differs); it is not run again",
                    f.path.name,
                    extra={"outlast_event": "migration_file_changed", "version": version},
                )
        pending = tuple(f.version for f in self.files if f.version not in applied)
        unknown = tuple(sorted(v for v in applied if v not in known))
        last_applied = [f.version for f in self.files if f.version in applied]
        current = tuple(last_applied[-1:]) if last_applied else ()
        target = (self.files[-1].version,) if self.files else ()
        return SchemaState(current=current, target=target, pending=pending, unknown=unknown)

    def apply(self, ctx: ApplyContext) -> None:
        """Apply the pending files in order on a connection of our own (autocommit)."""
        import psycopg

        with psycopg.connect(ctx.dsn, autocommit=True, **ctx.connect_kwargs()) as conn:
            unwatch = ctx.watch(conn.fileno())
            try:
                self._apply(conn, ctx)
            finally:
                unwatch()

    def _apply(self, conn: psycopg.Connection[Any], ctx: ApplyContext) -> None:
        from psycopg import sql

        ctx.before_statement()
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY, name text NOT NULL,"
                " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
                " duration_ms integer NOT NULL, applied_by text)"
            ).format(self._ident())
        )
        rows = conn.execute(sql.SQL("SELECT version, checksum FROM {}").format(self._ident()))
        applied = self._applied(rows.fetchall())
        record = sql.SQL(
            "INSERT INTO {} (version, name, checksum, duration_ms, applied_by)"
            " VALUES (%s, %s, %s, %s, %s)"
        ).format(self._ident())
        by = ctx.application_name
        for f in self.files:
            if f.version in applied:
                continue
            started = time.monotonic()
            ctx.progress(f"applying {f.path.name}")
            if f.transactional:
                with conn.transaction():
                    ctx.before_statement()
                    conn.execute(f.text.encode())  # as is: several statements, % untouched
                    ctx.before_statement()
                    ms = round((time.monotonic() - started) * 1000)
                    conn.execute(record, (f.version, f.name, f.checksum, ms, by))
            else:
                for statement in split_statements(f.text):
                    ctx.before_statement()
                    conn.execute(statement.encode())
                ctx.before_statement()
                ms = round((time.monotonic() - started) * 1000)
                conn.execute(record, (f.version, f.name, f.checksum, ms, by))

    def close(self) -> None:
        """Nothing to close: state checks use the lock session."""
