"""Explore ``Guard.transaction`` under a fault at every protocol message (generated points).

For each client style (`explore_styles.STYLES`: SQLAlchemy Core, ORM sessions
with autoflush on and off, AsyncSession on asyncpg and psycopg, psycopg,
psycopg2 and asyncpg pools, the Django ORM) and each transaction shape
(`explore_kit.SHAPES`: one INSERT, several statements, INSERT + NOTIFY, NOTIFY
alone, savepoints, read-only, a deferred key that fails at COMMIT), one clean
run is recorded through the chaos proxy, then replayed with a one-shot
``cut_at`` fault at a message of the transaction: before or after it, ending
the link with a FIN, an RST or a FATAL 57P01. A ledger kept in the test
checks: every success stored exactly once, every failure absent, an
unknown only as `CommitOutcomeUnknown` (all or nothing), nothing doubled,
no failure other than the doomed shape's own, every fault point reached.

The points are sampled to keep CI to a few minutes (see `explore_kit.plan`);
``OUTLAST_EXPLORE=all`` replays every point (``=<n>``: n per style).
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

BUDGET = 200  # fault points per style in CI, coverage first (see explore_kit.plan)
IN_PROCESS = sorted(name for name in STYLES if name != "django_orm")


@pytest.fixture
def explore_db(pg_database: PgDatabase) -> PgDatabase:
    kit.prepare(pg_database.dsn())
    return pg_database


@pytest.fixture
def proxy(pg_server: Any) -> Iterator[Proxy]:
    with Proxy(upstream=(pg_server.host, pg_server.port)) as p:
        yield p


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():  # the count of fault points shows in every run, -s or not
        print(f"\n[explore] {line}")


@pytest.mark.slow
@pytest.mark.parametrize("name", IN_PROCESS)
def test_explore(
    name: str, explore_db: PgDatabase, proxy: Proxy, capsys: pytest.CaptureFixture[str]
) -> None:
    style = STYLES[name]()
    target = Target(proxy.host, proxy.port, explore_db.name)
    explorer = kit.Explorer(style, proxy, target)
    budget = kit.budget_from_env(BUDGET)
    listener = kit.listen(explore_db.dsn())
    try:
        start = kit.time.monotonic()
        if style.asynchronous:
            asyncio.run(explorer.aexplore(budget))
        else:
            explorer.explore(budget)
        with psycopg.connect(explore_db.dsn(), autocommit=True) as direct:
            verdict = kit.check(name, explorer.runs, direct, listener)
        verdict.seconds = kit.time.monotonic() - start
    finally:
        listener.close()
    _report(capsys, verdict.summary())
    assert verdict.points >= min(budget or 0, 40)
    assert verdict.clean, "\n".join(verdict.problems())


@pytest.mark.slow
def test_explore_django(
    explore_db: PgDatabase, pg_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    budget = kit.budget_from_env(BUDGET)
    verdict = kit.django_child(pg_server, explore_db.name, "explore", budget)
    _report(capsys, verdict["summary"])
    assert verdict["points"] >= min(budget or 0, 40)
    assert verdict["clean"], "\n".join(verdict["problems"])
