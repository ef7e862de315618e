"""The job queue's tables: created and upgraded by the library itself.

Everything lives in one schema (default ``outlast_jobs``) so the queue never
collides with an application's own tables:

- ``jobs``: one row per job. Waiting jobs are ``queued`` (``run_at`` may lie
  in the future: a scheduled job or a retry's backoff); a claimed job is
  ``running`` with a ``worker``, a ``lease_until`` its worker keeps pushing
  forward, and ``attempts`` counting its claims (the claim's token: a
  completion or a reclaim only applies to the attempt it read). Finished jobs
  are deleted, or kept as ``done``; ``failed`` is the dead letter; a
  ``cancelled`` job never runs again.
- ``slots``: the numbered per-key slots (``kind``, ``key``, ``n``) held by
  running jobs of a kind with a per-key limit. The primary key is the gate: two
  workers claiming the same free slot at the same moment cannot both insert it,
  even before either has committed (a count of running rows could not see the
  other's uncommitted claim).
- ``leases``: the same numbered slots for `outlast.jobs.Slots`, held by a
  caller's own workers (Celery, RQ, threads) under a lease of their own.
- ``meta``: the schema version.

`install` takes a transaction-level advisory lock, so many processes starting
at once upgrade the schema exactly once; each step runs in that transaction.
"""

from __future__ import annotations

import re
from typing import Any

from outlast import ConfigurationError

__all__ = ["SCHEMA_VERSION", "ainstall", "check_schema_name", "install", "migrations"]

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,50}$")


def check_schema_name(schema: str) -> str:
    """`schema` if it is a plain lower-case SQL identifier, else `ConfigurationError`."""
    if not isinstance(schema, str) or not _NAME.match(schema):
        raise ConfigurationError(
            f"schema must be a lower-case SQL identifier (letters, digits, _), got {schema!r}"
        )
    return schema


def migrations(s: str) -> list[list[str]]:
    """The upgrade steps for schema `s`; step ``i`` brings version ``i`` to ``i + 1``."""
    return [
        [
            f"""
            CREATE TABLE {s}.jobs (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind text NOT NULL,
                key text,
                payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                state text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
                priority integer NOT NULL DEFAULT 0,
                run_at timestamptz NOT NULL DEFAULT now(),
                attempts integer NOT NULL DEFAULT 0,
                max_attempts integer NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
                dedupe text,
                slot integer,
                worker text,
                lease_until timestamptz,
                cancel_requested boolean NOT NULL DEFAULT false,
                last_error text,
                created_at timestamptz NOT NULL DEFAULT now(),
                started_at timestamptz,
                finished_at timestamptz
            )
            """,
            # The claim walks this index in order; only waiting jobs are in it.
            f"CREATE INDEX jobs_ready ON {s}.jobs (priority DESC, run_at, id)"
            " WHERE state = 'queued'",
            # Expired leases are found (and reclaimed) through this one.
            f"CREATE INDEX jobs_leases ON {s}.jobs (lease_until) WHERE state = 'running'",
            # At most one live job per (kind, dedupe key).
            f"CREATE UNIQUE INDEX jobs_dedupe ON {s}.jobs (kind, dedupe)"
            " WHERE dedupe IS NOT NULL AND state IN ('queued', 'running')",
            f"CREATE INDEX jobs_finished ON {s}.jobs (state, finished_at)"
            " WHERE state IN ('done', 'failed', 'cancelled')",
            f"""
            CREATE TABLE {s}.slots (
                kind text NOT NULL,
                key text NOT NULL,
                n integer NOT NULL CHECK (n >= 1),
                job_id bigint NOT NULL,
                acquired_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (kind, key, n)
            )
            """,
            f"""
            CREATE TABLE {s}.leases (
                name text NOT NULL,
                key text NOT NULL,
                n integer NOT NULL CHECK (n >= 1),
                holder text NOT NULL,
                lease_until timestamptz NOT NULL,
                acquired_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (name, key, n)
            )
            """,
        ],
    ]


SCHEMA_VERSION = len(migrations("x"))


def _lock_id(schema: str) -> int:
    # A stable 63-bit number per schema name (hash() is salted per process).
    import zlib

    return 0x6F75746C6173 ^ zlib.crc32(schema.encode())


def _prelude(s: str) -> list[tuple[str, tuple[Any, ...]]]:
    return [
        ("SELECT pg_advisory_xact_lock(%s)", (_lock_id(s),)),
        (f"CREATE SCHEMA IF NOT EXISTS {s}", ()),
        (
            f"CREATE TABLE IF NOT EXISTS {s}.meta (id integer PRIMARY KEY CHECK (id = 1),"
            " version integer NOT NULL)",
            (),
        ),
        (f"INSERT INTO {s}.meta VALUES (1, 0) ON CONFLICT (id) DO NOTHING", ()),
    ]


def _too_new(s: str, found: int) -> ConfigurationError:
    return ConfigurationError(
        f"the job schema {s!r} is at version {found}, newer than this outlast "
        f"({SCHEMA_VERSION}); upgrade outlast"
    )


def install(conn: Any, schema: str) -> int:
    """Create or upgrade the job tables on a psycopg connection; return the version."""
    s = check_schema_name(schema)
    with conn.transaction():
        for sql, params in _prelude(s):
            conn.execute(sql, params)
        row = conn.execute(f"SELECT version FROM {s}.meta WHERE id = 1").fetchone()
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise _too_new(s, found)
        for step in migrations(s)[found:]:
            for sql in step:
                conn.execute(sql)
        conn.execute(f"UPDATE {s}.meta SET version = %s WHERE id = 1", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


async def ainstall(conn: Any, schema: str) -> int:
    """The asyncio twin of `install`."""
    s = check_schema_name(schema)
    async with conn.transaction():
        for sql, params in _prelude(s):
            await conn.execute(sql, params)
        cur = await conn.execute(f"SELECT version FROM {s}.meta WHERE id = 1")
        row = await cur.fetchone()
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise _too_new(s, found)
        for step in migrations(s)[found:]:
            for sql in step:
                await conn.execute(sql)
        await conn.execute(f"UPDATE {s}.meta SET version = %s WHERE id = 1", (SCHEMA_VERSION,))
    return SCHEMA_VERSION
