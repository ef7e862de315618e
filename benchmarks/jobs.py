"""Drain the same backlog with outlast.jobs, pgqueuer and procrastinate, side by side.

Starts a private PostgreSQL (outlast.testing.EmbeddedPostgres), then for each
round and each queue (the order rotates every round): creates a fresh database,
installs that queue's schema, enqueues the backlog (not timed), and times one
worker process draining it, from the worker's start to the last handler's
return. Every queue gets the same backlog, the same no-op ``async def``
handler, the same psycopg 3 driver and the same concurrency; outlast.jobs runs
with its per-key limit on (``--keys`` keys, ``--limit`` running per key)::

    .venv/bin/python benchmarks/jobs.py                       # 20k jobs, 3 rounds
    .venv/bin/python benchmarks/jobs.py --jobs 5000 --rounds 1 --queues outlast,pgqueuer
    .venv/bin/python benchmarks/jobs.py --durable             # fsync and synchronous_commit on

Prints the server's ``fsync`` / ``synchronous_commit``, each run's jobs/s, the
median per queue and the median of the per-round ratios to outlast.jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUEUES = ("outlast", "pgqueuer", "procrastinate")


# -- children: one queue, one database, one drain ------------------------------------------


async def _drain_outlast(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    import outlast.jobs

    limits = {"bench": args.limit} if args.limit else None
    jobs = outlast.jobs.Jobs(dsn, limits=limits)
    done = 0
    finished = asyncio.Event()
    last = 0.0

    @jobs.handler("bench")
    async def bench(job: outlast.jobs.Job) -> None:
        nonlocal done, last
        done += 1
        if done >= args.jobs:
            last = time.perf_counter()
            finished.set()

    await jobs.aenqueue_many(
        [outlast.jobs.NewJob("bench", {"i": i}, key=i % args.keys) for i in range(args.jobs)]
    )
    await jobs.aclose()
    worker = jobs.worker(concurrency=args.concurrency)
    start = time.perf_counter()
    task = asyncio.create_task(worker.arun())
    await asyncio.wait_for(finished.wait(), args.timeout)
    worker.stop()
    await task
    return {"seconds": last - start, "done": done}


async def _drain_pgqueuer(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    import psycopg
    from pgqueuer import Job, PsycopgDriver, QueueManager
    from pgqueuer.domain.types import QueueExecutionMode
    from pgqueuer.queries import Queries

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        driver = PsycopgDriver(conn)
        queries = Queries(driver)
        await queries.install()
        chunk = 1000
        for start_at in range(0, args.jobs, chunk):
            n = min(chunk, args.jobs - start_at)
            await queries.enqueue(["bench"] * n, [b"{}"] * n, [0] * n)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        qm = QueueManager(Queries(PsycopgDriver(conn)))
        done = 0
        last = 0.0

        @qm.entrypoint("bench")
        async def bench(job: Job) -> None:
            nonlocal done, last
            done += 1
            if done >= args.jobs:
                last = time.perf_counter()

        start = time.perf_counter()
        await asyncio.wait_for(
            qm.run(mode=QueueExecutionMode.drain, batch_size=args.batch), args.timeout
        )
    return {"seconds": last - start, "done": done}


async def _drain_procrastinate(dsn: str, args: argparse.Namespace) -> dict[str, float]:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    done = 0
    last = 0.0

    @app.task(name="bench")
    async def bench(i: int) -> None:
        nonlocal done, last
        done += 1
        if done >= args.jobs:
            last = time.perf_counter()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        chunk = 1000
        for start_at in range(0, args.jobs, chunk):
            n = min(chunk, args.jobs - start_at)
            await bench.batch_defer_async(*({"i": start_at + i} for i in range(n)))
        start = time.perf_counter()
        await asyncio.wait_for(
            app.run_worker_async(
                concurrency=args.concurrency, wait=False, install_signal_handlers=False
            ),
            args.timeout,
        )
    return {"seconds": last - start, "done": done}


def child(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.ERROR)
    drain = {
        "outlast": _drain_outlast,
        "pgqueuer": _drain_pgqueuer,
        "procrastinate": _drain_procrastinate,
    }[args.child]
    result = asyncio.run(drain(args.dsn, args))
    print(json.dumps(result))
    return 0


# -- parent: the server, the rounds, the table ---------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10, help="pgqueuer's batch_size")
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=3, help="outlast.jobs per-key limit (0: off)")
    parser.add_argument("--queues", default=",".join(QUEUES))
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--durable", action="store_true", help="fsync=on, synchronous_commit=on")
    parser.add_argument("--child", choices=QUEUES, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from outlast.testing import EmbeddedPostgres

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    settings = {"fsync": True, "synchronous_commit": True} if args.durable else {}
    server = EmbeddedPostgres(settings=settings)
    server.start()
    results: dict[str, list[float]] = {q: [] for q in queues}
    ratios: dict[str, list[float]] = {q: [] for q in queues}
    try:
        shown = server.psql(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit'),"
            " current_setting('server_version')"
        ).strip()
        fsync, sync_commit, version = shown.split("|")
        print(
            f"PostgreSQL {version}: fsync={fsync} synchronous_commit={sync_commit}; "
            f"{args.jobs} jobs, concurrency {args.concurrency}, pgqueuer batch_size {args.batch}, "
            f"outlast.jobs limit {args.limit or 'off'} per key over {args.keys} keys"
        )
        for r in range(args.rounds):
            order = queues[r % len(queues) :] + queues[: r % len(queues)]
            rates: dict[str, float] = {}
            for q in order:
                db = f"bench_{q}_{r}"
                server.create_database(db)
                try:
                    out = subprocess.run(
                        [
                            sys.executable,
                            str(Path(__file__).resolve()),
                            "--child",
                            q,
                            "--dsn",
                            server.dsn(db),
                            "--jobs",
                            str(args.jobs),
                            "--concurrency",
                            str(args.concurrency),
                            "--batch",
                            str(args.batch),
                            "--keys",
                            str(args.keys),
                            "--limit",
                            str(args.limit),
                            "--timeout",
                            str(args.timeout),
                        ],
                        capture_output=True,
                        text=True,
                        timeout=args.timeout + 120,
                        check=False,
                    )
                finally:
                    server.drop_database(db)
                if out.returncode != 0:
                    print(f"  {q}: failed\n{out.stderr[-2000:]}")
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                rate = result["done"] / result["seconds"]
                rates[q] = rate
                results[q].append(rate)
                print(f"  round {r + 1} {q:<14} {rate:>9.0f} jobs/s ({result['seconds']:.2f} s)")
            if "outlast" in rates:
                for q, rate in rates.items():
                    ratios[q].append(rates["outlast"] / rate)
        print("\nmedian jobs/s (and outlast.jobs / that queue, median of per-round ratios):")
        for q in queues:
            if results[q]:
                ratio = statistics.median(ratios[q]) if ratios[q] else float("nan")
                print(f"  {q:<14} {statistics.median(results[q]):>9.0f} jobs/s   x{ratio:.2f}")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
