"""Soak outlast.jobs: many jobs, per-key limits, SIGKILLed workers and two database outages.

Starts a private PostgreSQL and a chaos proxy in front of it, enqueues the
backlog (keys in runs, so many jobs of one key wait side by side and the limit
binds), then runs ``--workers`` worker processes through the proxy while it
SIGKILLs a random worker every ``--kill-every`` seconds (starting a replacement,
as a process supervisor would), cuts the proxy (refuse + drop every connection)
for ``--outage`` seconds at 30 % progress and stops and restarts the server at
60 %. Every handler appends ``start`` / ``end`` lines (monotonic clock, shared
by all processes) to its process's own file with one ``write`` each, so a
SIGKILL loses nothing written. Afterwards it checks:

- every job completed, the queue is empty, no dead letters, no slot left;
- per key, never more than ``--limit`` handlers running at once (intervals
  from the files; a killed worker's run ends at its kill);
- a job ran more than once only after a worker running it was killed, at most
  once more per kill; a job enqueued twice with the same dedupe key ran once;
- a killed worker's jobs restarted within two leases, and no job row stayed
  with a dead worker longer than one lease (polled during the run);
- no worker exited on its own; every worker that lived through an outage
  logged ``[WORKER_RESUMED]`` (settling and claiming again) within
  ``--resume-within`` seconds of its end; SIGTERM at the end stops every
  worker with exit code 0.

::

    .venv/bin/python benchmarks/jobs_soak.py                    # 100k jobs, ~3-5 minutes
    .venv/bin/python benchmarks/jobs_soak.py --jobs 6000 --keys 200 --lease 4 --kill-every 6

Prints a JSON report; exit code 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

KIND = "soak"


def now_ns() -> int:
    return time.monotonic_ns()


# -- the worker process ------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    # A SIGTERM before the worker is up (a replacement still importing) ends it
    # cleanly: it holds nothing yet. The worker installs its own handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    import logging

    import outlast.jobs

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.getpid()
    jobs = outlast.jobs.Jobs(
        args.dsn, limits={KIND: args.limit}, lease=args.lease, poll_interval=0.5
    )
    rng = random.Random(pid)

    @jobs.handler(KIND)
    async def soak(job: outlast.jobs.Job) -> None:
        os.write(fd, f"S {job.id} {job.attempt} {job.key} {job.slot} {pid} {now_ns()}\n".encode())
        await asyncio.sleep(rng.uniform(args.min_ms, args.max_ms) / 1000)
        os.write(fd, f"E {job.id} {job.attempt} {job.key} {job.slot} {pid} {now_ns()}\n".encode())

    jobs.worker(concurrency=args.concurrency, shutdown_timeout=10).run(handle_signals=True)
    return 0


# -- the driver ----------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        from outlast.chaos import Proxy
        from outlast.testing import EmbeddedPostgres

        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = Path(tempfile.mkdtemp(prefix="outlast-soak-"))
        self.server = EmbeddedPostgres()
        self.proxy: Proxy | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.killed: dict[int, int] = {}  # pid -> kill time (ns)
        self.spawned: dict[int, int] = {}  # pid -> start time (ns)
        self.exited_on_their_own: list[int] = []
        self.outages: list[dict[str, Any]] = []
        self.dead_hold: dict[int, float] = {}  # pid -> seconds it still had running rows
        self.generation = 0
        self.violations: list[str] = []
        self._watchers: list[threading.Thread] = []
        self.dedupe_ids: set[int] = set()

    # processes
    def spawn(self) -> None:
        assert self.proxy is not None
        self.generation += 1
        log = self.dir / f"w{self.generation}.log"
        stderr = open(self.dir / f"w{self.generation}.err", "wb")  # noqa: SIM115
        a = self.args
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "--dsn",
                self.server.dsn("soak", host=self.proxy.host, port=self.proxy.port),
                "--log",
                str(log),
                "--lease",
                str(a.lease),
                "--limit",
                str(a.limit),
                "--concurrency",
                str(a.concurrency),
                "--min-ms",
                str(a.min_ms),
                "--max-ms",
                str(a.max_ms),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        stderr.close()
        self.procs[proc.pid] = proc
        self.spawned[proc.pid] = now_ns()

    def kill_one(self) -> None:
        pid = self.rng.choice(sorted(self.procs))
        proc = self.procs.pop(pid)
        proc.kill()
        self.killed[pid] = now_ns()
        proc.wait(30)
        self.spawn()
        watcher = threading.Thread(target=self._watch_dead, args=(pid, self.killed[pid]))
        watcher.start()
        self._watchers.append(watcher)

    def _watch_dead(self, pid: int, killed_at: int) -> None:
        """How long do the killed worker's rows stay 'running'?"""
        import psycopg

        deadline = time.monotonic() + 10 * self.args.lease + 60
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.server.dsn("soak"), connect_timeout=3) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM outlast_jobs.jobs WHERE state = 'running'"
                        " AND worker LIKE %s",
                        (f"%:{pid}:%",),
                    ).fetchone()
                if row is not None and row[0] == 0:
                    self.dead_hold[pid] = (now_ns() - killed_at) / 1e9
                    return
            except Exception:  # the server is being restarted: try again
                pass
            time.sleep(0.25)
        self.violations.append(f"rows of killed worker {pid} still running after the deadline")

    def check_alive(self) -> None:
        for pid, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.exited_on_their_own.append(pid)
                del self.procs[pid]
                self.spawn()

    # the run
    def remaining(self) -> int | None:
        import psycopg

        try:
            with psycopg.connect(self.server.dsn("soak"), connect_timeout=3) as conn:
                row = conn.execute("SELECT count(*) FROM outlast_jobs.jobs").fetchone()
            return None if row is None else int(row[0])
        except Exception:
            return None

    def enqueue(self) -> tuple[list[int], int, int]:
        import outlast.jobs

        a = self.args
        jobs = outlast.jobs.Jobs(self.server.dsn("soak"), limits={KIND: a.limit})
        items: list[outlast.jobs.NewJob] = []
        dedupe: list[outlast.jobs.NewJob] = []
        n = 0
        while n < a.jobs:
            key = self.rng.randrange(a.keys)
            for _ in range(min(self.rng.randint(1, 12), a.jobs - n)):
                d = f"d{n}" if self.rng.random() < 0.02 else None
                job = outlast.jobs.NewJob(KIND, {"n": n}, key=key, dedupe=d)
                items.append(job)
                if d:
                    dedupe.append(job)
                n += 1
        ids = jobs.enqueue_many(items)
        again = jobs.enqueue_many(dedupe)  # every one must be turned away
        jobs.close()
        self.dedupe_ids = {i for i, job in zip(ids, items, strict=True) if job.dedupe and i}
        return (
            [i for i in ids if i is not None],
            sum(1 for i in again if i is not None),
            len(dedupe),
        )

    def run(self) -> dict[str, Any]:
        from outlast.chaos import Proxy

        a = self.args
        self.server.start()
        self.server.create_database("soak")
        self.proxy = Proxy(("127.0.0.1", 0), (self.server.host, self.server.port))
        self.proxy.start()
        t_enqueue = time.monotonic()
        ids, dedupe_accepted, dedupe_total = self.enqueue()
        enqueue_s = time.monotonic() - t_enqueue
        total = len(ids)
        for _ in range(a.workers):
            self.spawn()
        start = time.monotonic()
        next_kill = start + a.kill_every * self.rng.uniform(0.5, 1.5)
        outage_plan = [("proxy", 0.3), ("restart", 0.6)]
        left: int | None = total
        last_outage = 0.0
        while time.monotonic() - start < a.timeout:
            time.sleep(0.2)
            self.check_alive()
            r = self.remaining()
            left = r if r is not None else left
            if left == 0:
                break
            done = 1 - (left or 0) / total
            # At its share of progress, and not before every first worker is well up;
            # 5 s apart, unless the queue is about to drain first (a fast machine).
            quiet = time.monotonic() - max(start + 3, last_outage)
            if (
                outage_plan
                and done >= outage_plan[0][1]
                and (quiet > 5 or (done >= 0.85 and quiet > 2))
            ):
                self.outage(outage_plan.pop(0)[0])
                last_outage = time.monotonic()
                continue
            if time.monotonic() >= next_kill:
                self.kill_one()
                next_kill = time.monotonic() + a.kill_every * self.rng.uniform(0.5, 1.5)
        elapsed = time.monotonic() - start
        for watcher in self._watchers:
            watcher.join(10 * a.lease + 60)
        slots_left = self.server.psql("SELECT count(*) FROM outlast_jobs.slots", dbname="soak")
        dead = self.server.psql(
            "SELECT count(*) FROM outlast_jobs.jobs WHERE state = 'failed'", dbname="soak"
        )
        exit_codes = self.stop_workers()
        report = self.check(ids, elapsed)
        report.update(
            jobs=total,
            keys=a.keys,
            limit=a.limit,
            workers=a.workers,
            concurrency_per_worker=a.concurrency,
            lease_s=a.lease,
            enqueue_s=round(enqueue_s, 2),
            drain_s=round(elapsed, 1),
            jobs_per_s=round(total / elapsed),
            left_in_queue=left,
            slots_left=int(slots_left.strip() or -1),
            dead_letters=int(dead.strip() or -1),
            kills=len(self.killed),
            outages=self.outages,
            workers_exited_on_their_own=len(self.exited_on_their_own),
            sigterm_exit_codes=exit_codes,
            dedupe_duplicates_enqueued=dedupe_total,
            dedupe_duplicates_accepted=dedupe_accepted,
        )
        self.final_checks(report)
        report["violations"] = self.violations
        return report

    def resumed_lines(self) -> list[tuple[int, float]]:
        """(pid, wall-clock time) of every [WORKER_RESUMED] line in the workers' logs."""
        import datetime
        import re

        pattern = re.compile(r"^(\S+ \S+) \S+ \[WORKER_RESUMED\] worker=[^:]+:(\d+):")
        out = []
        for err in self.dir.glob("w*.err"):
            for line in err.read_text(errors="replace").splitlines():
                m = pattern.match(line)
                if m:
                    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                    out.append((int(m.group(2)), when.timestamp()))
        return out

    def outage(self, kind: str) -> None:
        assert self.proxy is not None
        a = self.args
        began = now_ns()
        began_wall = time.time()
        if kind == "proxy":
            fault = self.proxy.add_fault("down")
            self.proxy.close_connections()
            time.sleep(a.outage)
            self.proxy.remove_fault(fault)
        else:
            self.server.stop("fast")
            time.sleep(a.outage)
            self.server.start()
        self.outages.append(
            {
                "kind": kind,
                "began": began,
                "ended": now_ns(),
                "began_wall": began_wall,
                "ended_wall": time.time(),
            }
        )

    def stop_workers(self) -> list[int | None]:
        codes: list[int | None] = []
        # A replacement started a moment ago may still be starting Python itself.
        youngest = max(self.spawned[pid] for pid in self.procs)
        time.sleep(max(0.0, 3.0 - (now_ns() - youngest) / 1e9))
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(60))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
        return codes

    # the verdict
    def check(self, ids: list[int], elapsed: float) -> dict[str, Any]:
        a = self.args
        runs: dict[int, list[dict[str, Any]]] = defaultdict(list)
        open_runs: dict[tuple[int, int, int], dict[str, Any]] = {}
        for log in sorted(self.dir.glob("w*.log")):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) != 7:
                    continue  # a line cut by SIGKILL mid-write (os.write is one call: rare)
                tag, job_id, attempt, key, slot, pid, t = parts
                k = (int(job_id), int(attempt), int(pid))
                if tag == "S":
                    run = {
                        "job": int(job_id),
                        "attempt": int(attempt),
                        "key": key,
                        "slot": slot,
                        "pid": int(pid),
                        "start": int(t),
                        "end": None,
                    }
                    open_runs[k] = run
                    runs[int(job_id)].append(run)
                elif k in open_runs:
                    open_runs.pop(k)["end"] = int(t)
        missing = [i for i in ids if not any(r["end"] is not None for r in runs.get(i, []))]
        if missing:
            self.violations.append(f"{len(missing)} jobs never completed, e.g. {missing[:5]}")
        # Per-key concurrency from intervals.
        events: dict[str, list[tuple[int, int]]] = defaultdict(list)
        unexplained_open = 0
        for job_runs in runs.values():
            for run in job_runs:
                end = run["end"]
                if end is None:
                    end = self.killed.get(run["pid"])
                    if end is None:
                        unexplained_open += 1
                        continue
                events[run["key"]].append((run["start"], 1))
                events[run["key"]].append((end, -1))
        max_per_key = 0
        at_limit = 0
        for evs in events.values():
            level = 0
            for _, step in sorted(evs, key=lambda e: (e[0], e[1])):  # ends before starts
                level += step
                max_per_key = max(max_per_key, level)
                at_limit += step > 0 and level == a.limit
        if max_per_key > a.limit:
            self.violations.append(f"per-key limit exceeded: {max_per_key} > {a.limit}")
        if unexplained_open:
            self.violations.append(f"{unexplained_open} runs never ended in a live worker")
        # Re-runs: only after a kill of the worker running it, at most once more per kill.
        reruns = 0
        dedupe_reruns = 0
        rerun_delays: list[float] = []
        delays_by_kill: dict[int, list[float]] = {}
        for job_id, job_runs in runs.items():
            job_runs.sort(key=lambda r: r["start"])
            for before, after in itertools.pairwise(job_runs):
                reruns += 1
                dedupe_reruns += job_id in self.dedupe_ids
                killed_at = self.killed.get(before["pid"])
                if killed_at is None or killed_at < before["start"]:
                    self.violations.append(
                        f"job {job_id} ran again (attempt {after['attempt']}) without its "
                        f"worker {before['pid']} being killed"
                    )
                    continue
                rerun_delays.append((after["start"] - killed_at) / 1e9)
                delays_by_kill.setdefault(before["pid"], []).append(rerun_delays[-1])
        # A kill whose lease window met an outage waits longer, by design: nobody
        # can reclaim while the database is away, and after a restart every lease
        # counts again from the server's start (live workers must not lose jobs).
        plain = [d for pid, ds in delays_by_kill.items() if not self.near_outage(pid) for d in ds]
        near = [d for pid, ds in delays_by_kill.items() if self.near_outage(pid) for d in ds]
        if any(d > 2 * a.lease for d in plain):
            self.violations.append("a killed worker's job restarted after more than 2 leases")
        if any(d > 3 * a.lease + a.outage for d in near):
            self.violations.append("a job killed near an outage restarted after 3 leases + outage")
        held_plain = [s for pid, s in self.dead_hold.items() if not self.near_outage(pid)]
        held_near = [s for pid, s in self.dead_hold.items() if self.near_outage(pid)]
        if any(s > a.lease + 3 for s in held_plain):
            self.violations.append("a dead worker held rows longer than one lease")
        if any(s > 2 * a.lease + a.outage + 3 for s in held_near):
            self.violations.append("a dead worker held rows past its lease + outage + a lease")
        # After each outage: when each worker that lived through it logged
        # [WORKER_RESUMED] (its first good round: settled and claimed again), and
        # when the first job started. A replacement started later proves nothing.
        resumed = self.resumed_lines()
        for outage in self.outages:
            survivors = {
                pid
                for pid, born in self.spawned.items()
                # Up for a few seconds already (not a replacement still starting), and
                # not killed before it had the time to resume.
                if born < outage["began"] - 3e9
                and self.killed.get(pid, 1 << 62) > outage["ended"] + a.resume_within * 1e9
            }
            gaps = []
            for pid in survivors:
                after = [w for p, w in resumed if p == pid and w >= outage["began_wall"]]
                gaps.append(min(after) - outage["ended_wall"] if after else float("inf"))
            starts = [
                run["start"]
                for job_runs in runs.values()
                for run in job_runs
                if run["start"] >= outage["ended"]
            ]
            outage["seconds"] = round((outage["ended"] - outage["began"]) / 1e9, 2)
            outage["first_job_after_s"] = (
                round((min(starts) - outage["ended"]) / 1e9, 3) if starts else None
            )
            outage["workers_through_it"] = len(survivors)
            outage["slowest_worker_resumed_s"] = round(max(gaps), 3) if gaps else None
        return {
            "runs": sum(len(r) for r in runs.values()),
            "reruns_after_kills": reruns,
            # A dedupe key stops a second enqueue, not the re-run of a job whose
            # worker was killed mid-job (at-least-once): counted, not a violation.
            "reruns_of_dedupe_jobs_after_kills": dedupe_reruns,
            "rerun_delay_s_max": round(max(plain, default=0.0), 2),
            "rerun_delay_s_max_kill_near_outage": round(max(near, default=0.0), 2),
            "dead_worker_rows_cleared_s_max": round(max(held_plain, default=0.0), 2),
            "dead_worker_rows_cleared_s_max_kill_near_outage": round(
                max(held_near, default=0.0), 2
            ),
            "max_running_per_key": max_per_key,
            "times_a_key_reached_its_limit": at_limit,
        }

    def near_outage(self, pid: int) -> bool:
        """Did an outage overlap the two leases after this worker's kill?

        Within them its jobs are due to run again; an outage there delays that
        (nobody can reclaim meanwhile, and a restart restarts every lease).
        """
        killed = self.killed[pid]
        window = killed + int(2 * self.args.lease * 1e9)
        return any(o["began"] < window and o["ended"] > killed for o in self.outages)

    def final_checks(self, report: dict[str, Any]) -> None:
        a = self.args
        if report["left_in_queue"] != 0:
            self.violations.append(f"{report['left_in_queue']} jobs left in the queue")
        if report["slots_left"] != 0:
            self.violations.append(f"{report['slots_left']} slots still held at the end")
        if report["dead_letters"] != 0:
            self.violations.append(f"{report['dead_letters']} dead letters")
        if report["workers_exited_on_their_own"]:
            self.violations.append(f"{report['workers_exited_on_their_own']} workers exited")
        if any(code != 0 for code in report["sigterm_exit_codes"]):
            self.violations.append(f"SIGTERM exit codes {report['sigterm_exit_codes']}")
        if report["dedupe_duplicates_accepted"]:
            self.violations.append("a duplicate dedupe key was accepted")
        for outage in self.outages:
            resumed = outage.get("slowest_worker_resumed_s")
            if resumed is None or resumed > a.resume_within:
                self.violations.append(
                    f"after the {outage['kind']} outage a worker resumed after {resumed}s"
                )
        if len(self.outages) < 2:
            self.violations.append(f"only {len(self.outages)} of 2 outages ran: too short a run")
        for o in self.outages:
            for k in ("began", "ended", "began_wall", "ended_wall"):
                o.pop(k, None)

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        if self.proxy is not None:
            self.proxy.stop()
        self.server.cleanup()

    def remove_logs(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--kill-every", type=float, default=15.0)
    parser.add_argument("--outage", type=float, default=4.0, help="seconds of each outage")
    parser.add_argument("--min-ms", type=float, default=2.0)
    parser.add_argument("--max-ms", type=float, default=40.0)
    parser.add_argument(
        "--resume-within",
        type=float,
        default=5.0,
        help="fail if a worker needs longer to run jobs again after an outage",
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        soak.cleanup()
    if report["violations"]:
        report["logs"] = str(soak.dir)  # kept for a look: per-worker intervals and stderr
    else:
        soak.remove_logs()
    print(json.dumps(report, indent=2))
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
