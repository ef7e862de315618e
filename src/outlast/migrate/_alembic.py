"""Alembic in-process: ``upgrade <target>`` under the lock; the head check from its scripts.

The state check reads the version table with one short query and compares it
with the heads of Alembic's own `ScriptDirectory` (no ``env.py`` run, no
SQLAlchemy engine): cheap enough for every process to poll.

The upgrade runs Alembic's ``command.upgrade`` in this process on a connection
outlast opens (tagged, fenced per statement) and hands to ``env.py`` as
``config.attributes["connection"]`` — Alembic's documented recipe for
sharing a connection. An ``env.py`` that ignores it and builds its own
engine still runs under the lock, but without the per-statement fence; the
run logs a warning when that happens.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from outlast import ConfigurationError

from ._runner import ApplyContext, Reader
from ._state import SchemaState

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = ["AlembicRunner", "keep_outlast_loggers", "plain_url"]

logger = logging.getLogger("outlast.migrate")


def plain_url(url: str) -> str | None:
    """A SQLAlchemy PostgreSQL URL as a libpq URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "postgresql":
        return None
    rendered: str = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    return rendered


class keep_outlast_loggers:
    """Undo ``logging.config.fileConfig`` disabling outlast's loggers.

    Alembic's ``env.py`` calls ``fileConfig(alembic.ini)``, which disables
    every logger the file does not name — ours included, so a lost lock
    would go unreported. `restore()` re-enables the ones that were enabled.
    """

    def __init__(self) -> None:
        manager = logging.Logger.manager
        self._enabled = [
            name
            for name, obj in list(manager.loggerDict.items())
            if (name == "outlast" or name.startswith("outlast."))
            and isinstance(obj, logging.Logger)
            and not obj.disabled
        ]

    def restore(self) -> None:
        """Re-enable the loggers that were enabled when this object was made."""
        for name in self._enabled:
            found = logging.Logger.manager.loggerDict.get(name)
            if isinstance(found, logging.Logger) and found.disabled:
                found.disabled = False


class AlembicRunner:
    """``alembic upgrade <target>`` run exactly once, in-process.

    `config`: the path of ``alembic.ini`` (or ``pyproject.toml``), or an
    ``alembic.config.Config``. `target`: ``"heads"`` (default), ``"head"`` or
    a revision. `section` and `x` are Alembic's ``-n`` and ``-x``.
    `version_table` / `version_table_schema`: where ``env.py`` keeps the
    version table, if not the default ``alembic_version``.
    """

    kind = "alembic"

    def __init__(
        self,
        config: str | os.PathLike[str] | Config = "alembic.ini",
        *,
        target: str = "heads",
        section: str = "alembic",
        x: Sequence[str] = (),
        version_table: str = "alembic_version",
        version_table_schema: str | None = None,
    ) -> None:
        from alembic.config import Config

        if isinstance(config, Config):
            self.config = config
        else:
            path = Path(config)
            if not path.is_file():
                raise ConfigurationError(f"no Alembic configuration at {str(path)!r}")
            toml = path.name == "pyproject.toml"
            self.config = Config(
                file_=None if toml else str(path),
                toml_file=str(path) if toml else None,
                ini_section=section,
                cmd_opts=Namespace(x=list(x)),
            )
        if self.config.cmd_opts is None:
            self.config.cmd_opts = Namespace(x=list(x))
        if ":" in target:
            raise ConfigurationError("a revision range is for offline --sql mode, not for upgrade")
        self.target = target
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        self._script: ScriptDirectory | None = None

    @property
    def script(self) -> ScriptDirectory:
        """Alembic's script directory (loaded once)."""
        if self._script is None:
            from alembic.script import ScriptDirectory
            from alembic.util import CommandError

            try:
                self._script = ScriptDirectory.from_config(self.config)
            except CommandError as exc:
                raise ConfigurationError(f"Alembic: {exc}") from None
        return self._script

    def describe(self) -> str:
        """``alembic <config file> -> <target>``."""
        name = self.config.config_file_name or getattr(self.config, "toml_file_name", None)
        return f"alembic {name or '(in-memory config)'} -> {self.target}"

    def default_dsn(self) -> str | None:
        """``sqlalchemy.url`` from the configuration, as a libpq URL (None if unset)."""
        url = self.config.get_main_option("sqlalchemy.url")
        return plain_url(url) if url else None

    def _targets(self) -> tuple[str, ...]:
        from alembic.util import CommandError

        try:
            if self.target in ("head", "heads"):
                heads = self.script.get_heads()
                if self.target == "head" and len(heads) > 1:
                    raise ConfigurationError(
                        "the Alembic script directory has several heads; use target 'heads'"
                    )
                return tuple(heads)
            return tuple(s.revision for s in self.script.get_revisions(self.target) if s)
        except CommandError as exc:
            raise ConfigurationError(f"Alembic: {exc}") from None

    def state(self, reader: Reader) -> SchemaState:
        """Compare the version table with the script directory's heads (or the target)."""
        table = self.version_table
        if self.version_table_schema:
            table = f"{self.version_table_schema}.{table}"
        rows = reader.query("SELECT to_regclass(%s) IS NOT NULL", (table,))
        current: tuple[str, ...] = ()
        if rows and rows[0][0]:
            from psycopg import sql

            ident = (
                sql.Identifier(self.version_table_schema, self.version_table)
                if self.version_table_schema
                else sql.Identifier(self.version_table)
            )
            found = reader.query(sql.SQL("SELECT version_num FROM {}").format(ident))
            current = tuple(sorted(str(r[0]) for r in found))
        return self._compare(current)

    def _compare(self, current: tuple[str, ...]) -> SchemaState:
        from alembic.script.revision import ResolutionError
        from alembic.util import CommandError

        targets = self._targets()
        script = self.script
        unknown = []
        for rev in current:
            try:
                if script.get_revision(rev) is None:
                    unknown.append(rev)
            except (ResolutionError, CommandError):
                unknown.append(rev)
        if unknown:
            return SchemaState(current=current, target=targets, pending=(), unknown=tuple(unknown))
        try:
            steps = list(script.iterate_revisions(targets, current, implicit_base=True))
        except (ResolutionError, CommandError):
            # Not an ancestor of the target: the database went past it.
            return SchemaState(current=current, target=targets, pending=(), unknown=current)
        pending = tuple(s.revision for s in reversed(steps))
        return SchemaState(current=current, target=targets, pending=pending)

    def apply(self, ctx: ApplyContext) -> None:
        """``command.upgrade(config, target)`` on a tagged, fenced connection of our own."""
        import psycopg
        import sqlalchemy as sa
        from alembic import command
        from sqlalchemy.pool import NullPool

        loggers = keep_outlast_loggers()
        kwargs = ctx.connect_kwargs()
        engine = sa.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(ctx.dsn, **kwargs),
            poolclass=NullPool,
        )

        def before(*_: Any) -> None:
            loggers.restore()
            ctx.before_statement()

        try:
            with engine.connect() as conn:
                sa.event.listen(conn, "before_cursor_execute", before)
                dbapi = conn.connection.dbapi_connection
                unwatch = ctx.watch(dbapi.fileno()) if dbapi is not None else (lambda: None)
                attributes = self.config.attributes
                had = attributes.get("connection")
                attributes["connection"] = conn
                try:
                    command.upgrade(self.config, self.target)
                    if conn.in_transaction():
                        ctx.check()
                        conn.commit()
                finally:
                    unwatch()
                    if had is None:
                        attributes.pop("connection", None)
                    else:
                        attributes["connection"] = had
                    loggers.restore()
        finally:
            engine.dispose()
        if ctx.statements == 0:
            logger.warning(
                "[MIGRATION] env.py did not use the connection outlast passed in"
                ' config.attributes["connection"]: the lock still serialises the upgrade,'
                " but a lost lock cannot stop its statements (see the README)",
                extra={"outlast_event": "migration_unfenced"},
            )

    def close(self) -> None:
        """Nothing to close: state checks use the lock session."""
