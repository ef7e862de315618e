"""pytest fixtures for the chaos proxy: ``pg_proxy`` and ``db_outage``.

Imported by the outlast pytest plugin. ``pg_proxy`` is a `ProxiedServer`: a
`outlast.chaos.Proxy` in front of the session's ``pg_server`` (one proxy per
session; every fault cleared and every connection closed after each test, and
``pg_proxy.logins()`` holds only the logins of the current test).
``db_outage(kind, **params)`` is a context manager that applies one fault to
it for the duration of a ``with`` block::

    def test_503_when_the_database_is_frozen(db_outage, client):
        with db_outage("blackhole"):
            assert client.get("/api/leads").status_code == 503
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from outlast.chaos import Proxy
from outlast.testing._postgres import EmbeddedPostgres

__all__ = ["ProxiedServer", "db_outage", "pg_proxy", "pg_proxy_session"]


class ProxiedServer(Proxy):
    """A `Proxy` in front of an `EmbeddedPostgres`, with DSN helpers that point at the proxy."""

    def __init__(self, server: EmbeddedPostgres, **options: Any) -> None:
        super().__init__(("127.0.0.1", 0), (server.host, server.port), **options)
        self.server = server

    def dsn(self, dbname: str = "postgres", **params: object) -> str:
        """A libpq key=value string for `dbname` through the proxy."""
        return self.server.dsn(dbname, host=self.host, port=self.port, **params)

    def url(self, dbname: str = "postgres", driver: str | None = "psycopg") -> str:
        """A SQLAlchemy URL (or a plain ``postgresql://`` one with ``driver=None``)."""
        scheme = "postgresql" if not driver else f"postgresql+{driver}"
        return f"{scheme}://{self.server.user}@{self.host}:{self.port}/{dbname}"


@pytest.fixture(scope="session")
def pg_proxy_session(pg_server: EmbeddedPostgres) -> Iterator[ProxiedServer]:
    """The session's proxy in front of ``pg_server`` (prefer ``pg_proxy``)."""
    proxy = ProxiedServer(pg_server, name="pg_proxy")
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def pg_proxy(pg_proxy_session: ProxiedServer) -> Iterator[ProxiedServer]:
    """A chaos proxy in front of ``pg_server``; its faults and connections end with the test."""
    pg_proxy_session.clear()
    pg_proxy_session.clear_logins()
    try:
        yield pg_proxy_session
    finally:
        pg_proxy_session.clear()
        pg_proxy_session.close_connections()


OutageFactory = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture
def db_outage(pg_proxy: ProxiedServer) -> OutageFactory:
    """``with db_outage("blackhole"): ...`` applies one fault to ``pg_proxy`` for the block.

    Takes the same arguments as `Proxy.fault`: ``kind``, ``duration``,
    ``toxicity`` and the fault's parameters.
    """
    return pg_proxy.fault
