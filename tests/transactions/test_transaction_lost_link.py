"""A connection that dies at an awkward message is still a lost connection.

Found by the exploration (`test_transaction_explore`): when the server's
FATAL 57P01 arrives right after a message the driver was still digesting,
the driver raises an error that reads like a bug, and the transaction was
judged by those words:

- psycopg after COMMIT's CommandComplete: ``InternalError: received 2
  results from command 'COMMIT'`` (no SQLSTATE) -- reported as a failure
  although the server had committed;
- asyncpg after a ReadyForQuery: ``InternalClientError: cannot switch to
  state 11; another operation (2) is in progress`` -- a lost connection
  before COMMIT that was never re-run;
- Django, the link lost inside one of fn's ``atomic()`` blocks: Django kept
  ``in_atomic_block`` set, and every later ``Guard.transaction`` on that
  thread was refused with `ConfigurationError`.

The adapters now say whether the connection is gone after an error; then the
transaction is re-run, or its COMMIT resolved, as for any lost connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import explore_kit as kit
import psycopg
import pytest
from explore_styles import STYLES, Target

from outlast.chaos import Proxy
from outlast.testing.plugin import PgDatabase


@pytest.fixture
def explore_db(pg_database: PgDatabase) -> PgDatabase:
    kit.prepare(pg_database.dsn())
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        yield p


def _index(recording: list[dict[str, Any]], kind: str) -> int:
    return next(i for i, k, _ in kit.window(recording) if k == kind)


CASES = [
    ("psycopg_pool", "downstream C COMMIT"),
    ("sqlalchemy_core", "downstream C COMMIT"),
    ("asyncpg_pool", "downstream Z BEGIN"),
    ("async_session_asyncpg", "downstream Z BEGIN"),
]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_a_fatal_message_after_a_reply_is_a_lost_connection(
    name: str, kind: str, explore_db: PgDatabase, proxy: Proxy
) -> None:
    """Fails on the code before this change: the call failed (at COMMIT: with the row stored)."""
    style = STYLES[name]()
    explorer = kit.Explorer(style, proxy, Target(proxy.host, proxy.port, explore_db.name))

    def after(index: int) -> kit.Point:  # delivered, then FATAL 57P01 and the end
        return kit.Point("downstream", index, True, "terminate", kind)

    async def arun() -> kit.Run:
        return await explorer.arun("insert", after(_index(await explorer.arecord("insert"), kind)))

    def run() -> kit.Run:
        return explorer.run("insert", after(_index(explorer.record("insert"), kind)))

    struck = asyncio.run(arun()) if style.asynchronous else run()
    listener = kit.listen(explore_db.dsn())
    try:
        with psycopg.connect(explore_db.dsn(), autocommit=True) as direct:
            verdict = kit.check(name, explorer.runs, direct, listener)
    finally:
        listener.close()
    assert struck.fired
    assert (struck.outcome, struck.error) == ("ok", "")
    assert verdict.clean, "\n".join(verdict.problems())


def test_django_connection_lost_inside_atomic_leaves_the_thread_usable(
    explore_db: PgDatabase, pg_server: Any
) -> None:
    """Fails on the code before this change: the re-run and every later transaction refused."""
    result = kit.django_child(pg_server, explore_db.name, "atomic")
    assert result["fired"]
    assert result["broken"][0] == "ok", result  # re-run on a new connection
    assert result["after"][0] == "ok", result  # the thread's next transaction
