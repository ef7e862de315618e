"""Django's ``migrate``, in-process, exactly once; its state from Django's own migration graph.

The state check builds Django's `MigrationExecutor` once (the plan from a
clean database to the leaf nodes) and afterwards reads only the recorder's
table on each poll: Django's loader re-imports every migration module each
time it is built, too costly to repeat twice a second in every process.

The leader runs ``call_command("migrate")`` on a fresh connection of the
database alias with the run tag as ``application_name``, the DDL timeouts
as startup options, no connection pool, and a per-statement fence
(``connection.execute_wrapper``). Django runs each migration in a transaction
on PostgreSQL (``atomic = True``, the default), so a leader killed mid-way
leaves no half-applied migration; a migration with ``atomic = False`` (for
``AddIndexConcurrently``) runs statement by statement.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from outlast import ConfigurationError

from ._runner import ApplyContext, Reader
from ._state import SchemaState

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["DjangoRunner"]

# libpq keywords Django users put in OPTIONS that the lock session needs too.
_LIBPQ_OPTIONS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslnegotiation",
    "channel_binding",
    "gssencmode",
    "target_session_attrs",
    "service",
    "passfile",
    "options",
)


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to a callback (``migrate``'s stdout)."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        super().__init__()
        self._sink = sink
        self._buffer = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buffer += text
        while "\n" in self._buffer:
            line, self._buffer = self._buffer.split("\n", 1)
            if line.strip():
                self._sink(line.strip())
        return len(text)

    def flush(self) -> None:
        # ``migrate`` flushes after "Applying x..." and writes " OK" later:
        # a line goes out only when it is complete (or at `finish`).
        pass

    def finish(self) -> None:
        """Hand over what is left without a newline."""
        if self._buffer.strip():
            self._sink(self._buffer.strip())
        self._buffer = ""


class DjangoRunner:
    """``manage.py migrate`` run exactly once, in-process.

    `database`: the alias in ``DATABASES``. `settings`: the settings module
    (default: ``DJANGO_SETTINGS_MODULE``). `app_label` / `migration`: what
    ``migrate`` would take as arguments (default: every app, to its latest
    migration).
    """

    kind = "django"

    def __init__(
        self,
        *,
        database: str = "default",
        settings: str | None = None,
        app_label: str | None = None,
        migration: str | None = None,
    ) -> None:
        if migration is not None and app_label is None:
            raise ConfigurationError("a Django migration name needs its app_label")
        self.database = database
        self.settings = settings
        self.app_label = app_label
        self.migration = migration
        self._plan: list[Any] | None = None
        self._targets: tuple[str, ...] = ()
        self._apps: frozenset[str] = frozenset()
        self._setup()

    def _setup(self) -> None:
        if self.settings:
            os.environ["DJANGO_SETTINGS_MODULE"] = self.settings
        if not os.environ.get("DJANGO_SETTINGS_MODULE"):
            from django.conf import settings

            if not settings.configured:
                raise ConfigurationError(
                    "Django is not configured: set DJANGO_SETTINGS_MODULE or pass settings="
                )
        import django
        from django.apps import apps

        if not apps.ready:
            django.setup()
        from django.db import connections

        if self.database not in connections:
            raise ConfigurationError(f"no database alias {self.database!r} in DATABASES")
        if connections[self.database].vendor != "postgresql":
            raise ConfigurationError(f"database {self.database!r} is not PostgreSQL")

    def _connection(self) -> BaseDatabaseWrapper:
        from django.db import connections

        return connections[self.database]

    def describe(self) -> str:
        """``django <settings module> database=<alias>``."""
        module = os.environ.get("DJANGO_SETTINGS_MODULE", "(configured)")
        return f"django {module} database={self.database}"

    def default_dsn(self) -> str | None:
        """A libpq DSN built from the alias's ``DATABASES`` entry."""
        from psycopg.conninfo import make_conninfo

        sd = self._connection().settings_dict
        params: dict[str, Any] = {
            "host": sd.get("HOST") or None,
            "port": sd.get("PORT") or None,
            "dbname": sd.get("NAME") or None,
            "user": sd.get("USER") or None,
            "password": sd.get("PASSWORD") or None,
        }
        for key in _LIBPQ_OPTIONS:
            value = (sd.get("OPTIONS") or {}).get(key)
            if value is not None:
                params[key] = value
        filtered = {k: str(v) for k, v in params.items() if v is not None}
        return make_conninfo("", **filtered) if filtered else None

    # ------------------------------------------------------------ state

    def _full_plan(self) -> list[Any]:
        if self._plan is None:
            from django.db.migrations.executor import MigrationExecutor

            executor = MigrationExecutor(self._connection())
            graph = executor.loader.graph
            if self.app_label is None:
                targets = graph.leaf_nodes()
            elif self.migration is None:
                targets = [n for n in graph.leaf_nodes() if n[0] == self.app_label]
                if not targets:
                    raise ConfigurationError(f"Django app {self.app_label!r} has no migrations")
            else:
                try:
                    migration = executor.loader.get_migration_by_prefix(
                        self.app_label, self.migration
                    )
                except (KeyError, Exception) as exc:
                    raise ConfigurationError(f"Django: {exc}") from None
                targets = [(migration.app_label, migration.name)]
            self._targets = tuple(f"{a}.{n}" for a, n in targets)
            self._apps = frozenset(node[0] for node in graph.nodes)
            self._plan = [m for m, backwards in executor.migration_plan(targets, clean_start=True)]
        return self._plan

    def state(self, reader: Reader) -> SchemaState:
        """The plan from a clean database, minus what the recorder says is applied."""
        from django.db import DatabaseError
        from django.db.migrations.recorder import MigrationRecorder

        conn = self._connection()
        try:
            plan = self._full_plan()
            recorder = MigrationRecorder(conn)
            applied = set(recorder.applied_migrations()) if recorder.has_table() else set()
        except DatabaseError:
            conn.close()  # the next poll starts from a fresh connection
            raise
        pending = []
        for m in plan:
            key = (m.app_label, m.name)
            if key in applied:
                continue
            if m.replaces and all(tuple(r) in applied for r in m.replaces):
                continue  # a squashed migration whose originals are applied
            pending.append(f"{m.app_label}.{m.name}")
        known = {(m.app_label, m.name) for m in plan}
        for m in plan:
            known.update(tuple(r) for r in (m.replaces or ()))
        unknown = sorted(f"{a}.{n}" for a, n in applied if a in self._apps and (a, n) not in known)
        latest: dict[str, str] = {}
        for m in plan:
            if (m.app_label, m.name) in applied:
                latest[m.app_label] = m.name
        current = tuple(f"{a}.{n}" for a, n in sorted(latest.items()))
        return SchemaState(
            current=current, target=self._targets, pending=tuple(pending), unknown=tuple(unknown)
        )

    # ------------------------------------------------------------ apply

    def apply(self, ctx: ApplyContext) -> None:
        """``call_command("migrate")`` on a fresh, tagged, fenced connection of the alias."""
        from django.core.management import call_command

        conn = self._connection()
        conn.close()
        original = conn.settings_dict["OPTIONS"]
        options = {k: v for k, v in original.items() if k != "pool"}  # never a pooled connection
        kwargs = ctx.connect_kwargs()
        kwargs.pop("options", None)  # rebuilt from OPTIONS' own below
        kwargs.pop("prepare_threshold", None)
        if ctx.server_settings and not ctx.pooled:
            given = options.get("options")
            ours = " ".join(f"-c {k}={v}" for k, v in ctx.server_settings.items())
            options["options"] = f"{given} {ours}" if given else ours
        if ctx.pooled and _is_psycopg3(conn):
            options["prepare_threshold"] = None  # no server-side statements behind a pooler
        options.update(kwargs)  # the run tag, connect timeout, keepalives
        conn.settings_dict["OPTIONS"] = options
        args = [a for a in (self.app_label, self.migration) if a]

        def fence(execute: Any, sql: Any, params: Any, many: Any, context: Any) -> Any:
            ctx.before_statement()
            return execute(sql, params, many, context)

        unwatch: Callable[[], None] = lambda: None  # noqa: E731
        try:
            conn.ensure_connection()
            raw = conn.connection
            if raw is not None:
                unwatch = ctx.watch(raw.fileno())
            lines = _Lines(ctx.progress)
            with conn.execute_wrapper(fence):
                call_command(
                    "migrate",
                    *args,
                    database=self.database,
                    interactive=False,
                    verbosity=1,
                    stdout=lines,
                    no_color=True,
                )
            lines.finish()
        finally:
            unwatch()
            conn.close()
            conn.settings_dict["OPTIONS"] = original
        self._plan = None  # a migrate may have made Django see new nodes (squashes)

    def close(self) -> None:
        """Close this thread's connection of the alias."""
        self._connection().close()


def _is_psycopg3(conn: Any) -> bool:
    return getattr(conn.Database, "__name__", "") == "psycopg"
