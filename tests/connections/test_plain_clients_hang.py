"""The contrast: the same query through plain, unhardened clients hangs on a dead link.

Four plain clients (SQLAlchemy sync, SQLAlchemy async, psycopg_pool, asyncpg)
warm up through the chaos proxy, then run ``SELECT 1`` after the fault is
applied. Each is still waiting 30 s later; the hardened factories fail the same
query within ~5 s (see the other test files). Lifting the fault ends the hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import psycopg_pool
import pytest
import sqlalchemy as sa
from conn_kit import Hang
from sqlalchemy.ext.asyncio import create_async_engine

HANG_FOR = 30.0


def _sa_sync(url: str) -> Callable[[threading.Event, threading.Event], None]:
    def run(ready: threading.Event, go: threading.Event) -> None:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            ready.set()
            go.wait(60)
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()

    return run


def _sa_async(url: str) -> Callable[[threading.Event, threading.Event], Any]:
    async def run(ready: threading.Event, go: threading.Event) -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            ready.set()
            await asyncio.to_thread(go.wait, 60)
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        finally:
            await engine.dispose()

    return run


def _psycopg_pool(dsn: str) -> Callable[[threading.Event, threading.Event], None]:
    def run(ready: threading.Event, go: threading.Event) -> None:
        with psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=1, open=True) as pool:
            with pool.connection() as conn:
                conn.execute("SELECT 1")
            ready.set()
            go.wait(60)
            with pool.connection() as conn:
                conn.execute("SELECT 1")

    return run


def _asyncpg_pool(dsn: str) -> Callable[[threading.Event, threading.Event], Any]:
    async def run(ready: threading.Event, go: threading.Event) -> None:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            await pool.fetchval("SELECT 1")
            ready.set()
            await asyncio.to_thread(go.wait, 60)
            await pool.fetchval("SELECT 1")
        finally:
            pool.terminate()

    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["blackhole", "freeze"])
def test_plain_clients_hang_past_30_seconds(
    pg_proxy: Any, pg_database: Any, db_outage: Any, kind: str
) -> None:
    name = pg_database.name
    clients = {
        "sqlalchemy+psycopg": _sa_sync(pg_proxy.url(name, driver="psycopg")),
        "sqlalchemy+asyncpg": _sa_async(pg_proxy.url(name, driver="asyncpg")),
        "psycopg_pool": _psycopg_pool(pg_proxy.dsn(name)),
        "asyncpg": _asyncpg_pool(pg_proxy.url(name, driver=None)),
    }
    go = threading.Event()
    hangs: dict[str, tuple[threading.Event, Hang]] = {}
    for label, client in clients.items():
        ready = threading.Event()
        hangs[label] = (ready, Hang(lambda c=client, r=ready: c(r, go)))
    try:
        for label, (ready, hang) in hangs.items():
            assert ready.wait(60), f"{label} did not warm up: {hang.error!r}"
        with db_outage(kind):
            go.set()
            start = time.monotonic()
            time.sleep(HANG_FOR)
            still = {label: not hang.done.is_set() for label, (_, hang) in hangs.items()}
            waited = time.monotonic() - start
        assert waited >= HANG_FOR
        assert still == dict.fromkeys(clients, True), {
            label: repr(hang.error) for label, (_, hang) in hangs.items()
        }
    finally:
        go.set()
        # Lifting the fault ends the hangs: a lifted blackhole closes its links,
        # a lifted freeze lets the queries through.
        for _, hang in hangs.values():
            if not hang.done.wait(60):
                pg_proxy.close_connections()
        for label, (_, hang) in hangs.items():
            assert hang.done.wait(60), f"{label} still hanging after the fault was lifted"
