"""What does a trustworthy transaction marker cost a read-only transaction?

``Guard.transaction`` reads a marker just before COMMIT. It used to be
``pg_current_xact_id_if_assigned()`` alone (NULL for a transaction that has
written nothing *yet*: a NOTIFY, an ORM flush at commit); it now assigns the
xid when there is none (`outlast._core.transactions.adapters.MARKER_SQL`).
This measures, side by side in alternating rounds on a private PostgreSQL
with ``fsync`` and ``synchronous_commit`` on (the test servers turn them off),
one read-only transaction (BEGIN; SELECT; marker; COMMIT over psycopg):

- ``no marker``: BEGIN; SELECT; COMMIT;
- ``old marker``: with ``pg_current_xact_id_if_assigned()``;
- ``new marker``: with `MARKER_SQL`;
- ``write``: an INSERT instead, for scale (its COMMIT waits for the disk);

then the xids each read-only transaction consumes, and what
``session.flush()`` costs a SQLAlchemy session with nothing to flush (the
session adapters now flush before the marker)::

    .venv/bin/python benchmarks/transaction_marker.py                 # ~1 minute
    .venv/bin/python benchmarks/transaction_marker.py --transactions 50 --rounds 20

Each round runs every side once, in an order that rotates, so load from
other processes hits every side alike; the ratios are the median of the
per-round ratios to the old marker (each against the same round).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg

from outlast._core.transactions.adapters import MARKER_SQL
from outlast.testing import EmbeddedPostgres

OLD_MARKER = "SELECT pg_current_xact_id_if_assigned()::text, pg_postmaster_start_time()::text"
READ = "SELECT count(*) FROM items"


def _sides(conn: psycopg.Connection[Any]) -> dict[str, Callable[[], None]]:
    def tx(*statements: str) -> Callable[[], None]:
        def run() -> None:
            for sql in statements:
                conn.execute(sql).fetchall() if sql.startswith("SELECT") else conn.execute(sql)
            conn.commit()

        return run

    return {
        "no marker": tx(READ),
        "old marker": tx(READ, OLD_MARKER),
        "new marker": tx(READ, MARKER_SQL),
        "write": tx("INSERT INTO items VALUES (1)", MARKER_SQL),
    }


def _per_transaction(run: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


def _xids(conn: psycopg.Connection[Any], run: Callable[[], None], n: int) -> float:
    def next_xid() -> int:
        row = conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").fetchone()
        conn.commit()
        assert row is not None
        return int(row[0])

    before = next_xid()
    for _ in range(n):
        run()
    return (next_xid() - before) / n


def _flush_cost(n: int) -> float:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    with Session(sa.create_engine("sqlite://")) as session:
        start = time.perf_counter()
        for _ in range(n):
            session.flush()
        return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=100, help="per side per round")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    settings = {"fsync": True, "synchronous_commit": True}
    with EmbeddedPostgres(settings=settings) as server:
        if not server.is_running():
            server.start()
        with psycopg.connect(server.dsn()) as conn:
            conn.execute("CREATE TABLE items (id int)")
            conn.commit()
            sides = _sides(conn)
            times: dict[str, list[float]] = {name: [] for name in sides}
            names = list(sides)
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    n = args.transactions if name != "write" else max(10, args.transactions // 5)
                    times[name].append(_per_transaction(sides[name], n))
            xids = {name: _xids(conn, sides[name], 200) for name in ("old marker", "new marker")}
    print(
        f"read-only transactions over psycopg, fsync on: {args.rounds} rounds of"
        f" {args.transactions}, medians"
    )
    old = times["old marker"]
    for name, values in times.items():
        ratio = statistics.median(v / o for v, o in zip(values, old, strict=True))
        median = statistics.median(values)
        print(f"  {name:<11} {median * 1e6:8.0f} µs per transaction  ({ratio:.2f}x old marker)")
    for name, per in xids.items():
        print(f"  xids consumed per read-only transaction, {name}: {per:.2f}")
    print(f"  session.flush() with nothing to flush: {_flush_cost(20000) * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
