"""The lease mode: a lock row with an expiry, for endpoints behind a transaction pooler.

Through PgBouncer in transaction mode every statement may run on another
server connection, so a session advisory lock cannot be held (rails#22092,
prisma#12999: the lock stays on a backend until ``server_lifetime`` and the
unlock returns false). A lease row works there because every step is one
self-contained statement:

- take: ``INSERT ... ON CONFLICT (name) DO UPDATE ... WHERE expires_at <= now()``
  — one atomic statement; the row's ``token`` grows by one on each take, so
  a holder can tell whether the lease is still the one it took;
- renew (the heartbeat, every quarter lease):
  ``UPDATE ... WHERE holder = me AND token = mine`` must touch one row;
- release: the same condition, checked, sets ``released_at``.

A holder that dies or freezes stops renewing and loses the lease after at
most one lease (10 s by default) — unlike Liquibase's lock row, which stays
until someone deletes it (liquibase#1311). Every process of a deployment must
use the same mode: a lease and an advisory lock do not exclude each other.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ._advisory import advisory_key
from ._holder import Holder, leader_name
from ._session import LockSession

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql as psql

__all__ = ["LeaseLock"]

DEFAULT_TABLE = "outlast_migrate_lease"


class LeaseLock(LockSession):
    """A lease row in `table` (created on first use), renewed by the heartbeat."""

    mode = "lease"

    def __init__(
        self, dsn: str, settings: Any, *, holder: str, key_id: str, table: str = DEFAULT_TABLE
    ) -> None:
        super().__init__(dsn, settings, holder=holder, key_id=key_id)
        parts = table.split(".")
        if not 1 <= len(parts) <= 2 or not all(parts):
            from outlast import ConfigurationError

            raise ConfigurationError(
                f"lease table must be 'table' or 'schema.table', not {table!r}"
            )
        self._table_parts = tuple(parts)
        self.table = table
        self.token: int | None = None
        self._table_ready = False

    def _ident(self) -> psql.Composable:
        from psycopg import sql

        return sql.Identifier(*self._table_parts)

    def _connect(self) -> psycopg.Connection[Any]:
        # A pooler takes no startup options and keeps no session state.
        return self.plain_connect()

    def _ensure_table(self) -> None:
        if self._table_ready:
            return
        from psycopg import sql

        with self._mutex:
            conn = self.connection()
            exists = conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (self._qualified(),)
            ).fetchone()
            if not (exists and exists[0]):
                # Concurrent CREATE TABLE IF NOT EXISTS can still collide in the
                # catalog; a transaction-level advisory lock serialises the
                # creators and is safe through a transaction pooler.
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s::int4, %s::int4)", _CREATE_KEY)
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} ("
                            " name text PRIMARY KEY,"
                            " holder text NOT NULL,"
                            " token bigint NOT NULL,"
                            " application_name text,"
                            " client_addr text,"
                            " backend_pid integer,"
                            " acquired_at timestamptz NOT NULL,"
                            " renewed_at timestamptz NOT NULL,"
                            " expires_at timestamptz NOT NULL,"
                            " released_at timestamptz)"
                        ).format(self._ident())
                    )
        self._table_ready = True

    def _qualified(self) -> str:
        return ".".join('"' + part.replace('"', '""') + '"' for part in self._table_parts)

    # ------------------------------------------------------------ the lock

    def try_acquire(self) -> bool:
        from psycopg import sql

        self._ensure_table()
        query = sql.SQL(
            "INSERT INTO {t} AS l (name, holder, token, application_name, client_addr,"
            " backend_pid, acquired_at, renewed_at, expires_at)"
            " VALUES (%s, %s, 1, %s, host(inet_client_addr()), pg_backend_pid(), now(), now(),"
            " now() + make_interval(secs => %s))"
            " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, token = l.token + 1,"
            " application_name = EXCLUDED.application_name, client_addr = EXCLUDED.client_addr,"
            " backend_pid = EXCLUDED.backend_pid, acquired_at = now(), renewed_at = now(),"
            " expires_at = EXCLUDED.expires_at, released_at = NULL"
            " WHERE l.released_at IS NOT NULL OR l.expires_at <= now()"
            " RETURNING token"
        ).format(t=self._ident())
        rows, _ = self.execute(
            query,
            (
                self.settings.name,
                self.holder_id,
                leader_name(self.holder_id, time.time()),
                self.settings.lease,
            ),
        )
        if not rows:
            return False
        self.token = int(rows[0][0])
        return True

    def holder(self) -> Holder | None:
        from psycopg import sql

        self._ensure_table()
        rows, _ = self.execute(
            sql.SQL(
                "SELECT backend_pid, application_name, client_addr, acquired_at, expires_at"
                " FROM {} WHERE name = %s AND released_at IS NULL AND expires_at > now()"
            ).format(self._ident()),
            (self.settings.name,),
        )
        if not rows:
            return None
        pid, app, client, acquired, expires = rows[0]
        return Holder.from_row(pid, app, client, None, None, since=acquired, lease_expires=expires)

    def still_held(self) -> bool:
        from psycopg import sql

        _, count = self.execute(
            sql.SQL(
                "UPDATE {} SET renewed_at = now(), expires_at = now() + make_interval(secs => %s)"
                " WHERE name = %s AND holder = %s AND token = %s AND released_at IS NULL"
            ).format(self._ident()),
            (self.settings.lease, self.settings.name, self.holder_id, self.token),
        )
        return count == 1

    def release_lock(self) -> bool:
        from psycopg import sql

        _, count = self.execute(
            sql.SQL(
                "UPDATE {} SET released_at = now(), expires_at = now()"
                " WHERE name = %s AND holder = %s AND token = %s AND released_at IS NULL"
            ).format(self._ident()),
            (self.settings.name, self.holder_id, self.token),
        )
        return count == 1


# Serialises the creation of the lease table (a transaction-level lock).
_CREATE_KEY = advisory_key("lease-table")
