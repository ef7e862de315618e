"""The outlast pytest plugin: a real PostgreSQL for every test session.

Registered through the ``pytest11`` entry point, so installing outlast makes
these fixtures available. Nothing starts until a test asks for a fixture.

- ``pg_server`` (session): an `EmbeddedPostgres` started once per session.
- ``pg_control`` (function): the same server, for tests that stop, kill or
  reconfigure it; afterwards it is running again with its default settings.
- ``pg_database`` (function): a fresh database cloned from a template.
- ``pg_dsn`` (function): ``pg_database.dsn()``.
- ``external_dsn`` (session): ``OUTLAST_TEST_DSN``; tests using it skip when unset.
- ``pg_any_database`` (function): like ``pg_database``, run once against the
  embedded server and, when ``OUTLAST_TEST_DSN`` is set, once more against that
  external server (a database created for the test and dropped afterwards).
- ``pg_proxy`` (function): an `outlast.chaos.Proxy` in front of ``pg_server``
  (``.dsn()``, ``.url()``), cleared after each test.
- ``db_outage`` (function): ``with db_outage("blackhole"): ...`` applies a fault
  to ``pg_proxy`` and clears it on exit.
- ``pg_bouncer`` (function): ``pg_bouncer(**options)`` starts a private PgBouncer
  (transaction pooling) in front of ``pg_server`` or ``upstream=(host, port)``,
  stopped after the test; the test skips where PgBouncer is not installed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from outlast.testing._chaos_fixtures import db_outage, pg_proxy, pg_proxy_session  # noqa: F401
from outlast.testing._external import ExternalPostgres
from outlast.testing._pgbouncer import PgBouncer, pgbouncer_binary
from outlast.testing._postgres import EmbeddedPostgres

__all__ = ["PgDatabase"]

TEMPLATE = "outlast_template"
_counter = itertools.count(1)


@dataclass(frozen=True)
class PgDatabase:
    """A per-test database on the embedded server."""

    server: EmbeddedPostgres | ExternalPostgres
    name: str

    def dsn(self, **params: object) -> str:
        return self.server.dsn(self.name, **params)

    def url(self, driver: str | None = "psycopg") -> str:
        return self.server.url(self.name, driver=driver)

    def psql(self, sql: str) -> str:
        return self.server.psql(sql, dbname=self.name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """A private PostgreSQL server on a loopback port, for the whole session."""
    # Its own temporary directory rather than pytest's tmp_path: pytest prunes
    # old numbered base directories, which must never be a live data directory
    # when several test sessions run side by side.
    server = EmbeddedPostgres()
    try:
        server.start()
        server.create_database(TEMPLATE)
        yield server
    finally:
        server.cleanup()


def _ensure_default(server: EmbeddedPostgres) -> None:
    if server.configured:
        server.reset_configuration()
    if not server.is_running():
        server.start()


@pytest.fixture
def pg_control(pg_server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The session server, for destructive tests; restored afterwards."""
    _ensure_default(pg_server)
    try:
        yield pg_server
    finally:
        _ensure_default(pg_server)


@pytest.fixture
def pg_database(pg_server: EmbeddedPostgres) -> Iterator[PgDatabase]:
    """A fresh database for one test, dropped afterwards."""
    if not pg_server.is_running():
        pg_server.start()
    name = f"t_{os.getpid()}_{next(_counter)}"
    pg_server.create_database(name, template=TEMPLATE)
    try:
        yield PgDatabase(pg_server, name)
    finally:
        _ensure_default(pg_server)
        pg_server.drop_database(name)


@pytest.fixture
def pg_dsn(pg_database: PgDatabase) -> str:
    return pg_database.dsn()


def _external_dsn() -> str:
    return os.environ.get("OUTLAST_TEST_DSN", "").strip()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrize only when an external server is configured, so a normal run
    # does not show a skipped twin of every test.
    if "pg_target" in metafunc.fixturenames:
        targets = ["embedded"] + (["external"] if _external_dsn() else [])
        metafunc.parametrize("pg_target", targets, indirect=True, scope="session")


@pytest.fixture(scope="session")
def pg_target(request: pytest.FixtureRequest) -> Iterator[EmbeddedPostgres | ExternalPostgres]:
    """The server a ``pg_any_database`` test runs against."""
    if getattr(request, "param", "embedded") == "external":
        yield ExternalPostgres(_external_dsn())
    else:
        yield request.getfixturevalue("pg_server")


@pytest.fixture
def pg_any_database(pg_target: EmbeddedPostgres | ExternalPostgres) -> Iterator[PgDatabase]:
    """A fresh database on the embedded server, or on ``OUTLAST_TEST_DSN``'s server."""
    if isinstance(pg_target, EmbeddedPostgres):
        if not pg_target.is_running():
            pg_target.start()
        template: str | None = TEMPLATE
    else:
        template = None
    name = f"t_{os.getpid()}_{next(_counter)}"
    pg_target.create_database(name, template=template)
    try:
        yield PgDatabase(pg_target, name)
    finally:
        if isinstance(pg_target, EmbeddedPostgres):
            _ensure_default(pg_target)
        pg_target.drop_database(name)


@pytest.fixture(scope="session")
def external_dsn() -> str:
    """A DSN for an external server (``OUTLAST_TEST_DSN``); skips when unset."""
    dsn = _external_dsn()
    if not dsn:
        pytest.skip("OUTLAST_TEST_DSN is not set")
    return dsn


@pytest.fixture
def pg_bouncer(pg_server: EmbeddedPostgres) -> Iterator[Callable[..., PgBouncer]]:
    """``pg_bouncer(upstream=None, **options)``: a started `PgBouncer`, stopped afterwards."""
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    started: list[PgBouncer] = []

    def start(upstream: tuple[str, int] | None = None, **options: Any) -> PgBouncer:
        bouncer = PgBouncer(upstream or (pg_server.host, pg_server.port), **options)
        started.append(bouncer)
        return bouncer.start()

    try:
        yield start
    finally:
        for bouncer in started:
            bouncer.close()
