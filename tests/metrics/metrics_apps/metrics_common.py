"""What both metrics test services share: a Guard, a hardened engine, a supervised loop."""

from __future__ import annotations

import os

import sqlalchemy as sa

import outlast
from outlast.sqlalchemy import create_engine
from outlast.supervise import Supervisor

# Short periods so a test sees the breaker open and close in seconds.
guard = outlast.Guard(
    "metrics",
    retry=outlast.Retry(attempts=2, timeout=0.5),
    breaker=outlast.Breaker(failure_threshold=2, open_for=0.5, max_open_for=1.0),
)
preset = outlast.Hardening(connect_timeout=1.0, statement_timeout=2.0, deadline_grace=0.5)
engine = create_engine(os.environ["DATABASE_URL"], guard=guard, preset=preset)
supervisor = Supervisor("metrics")


def count() -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM pg_class")).scalar_one())


@outlast.loop(every=0.3, guard=guard, name="pinger")
def pinger() -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def start_background() -> None:
    pinger.start(supervisor)
