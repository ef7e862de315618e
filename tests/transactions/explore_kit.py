"""Generated fault points for ``Guard.transaction``: record a clean run, replay a fault per message.

For a client style (`explore_styles`) and a transaction shape (`SHAPES`):

1. record: run the transaction once through the chaos proxy with a
   recording on, and keep the messages of the connection that ran it;
2. window: the transaction's messages, both directions, from the exchange
   that carries its BEGIN to the ReadyForQuery that answers its COMMIT;
3. points: each message of the window, each way of losing it (``forward``
   False: the link dies just before it; True: just after it, so a client
   message reaches the server and its answer is lost), each way the link
   dies (``close``: FIN, ``reset``: RST, ``terminate``: FATAL 57P01), as a
   one-shot ``cut_at`` fault on the Nth message of that direction;
4. replay: a new Guard and a new source per point (so the messages are the
   same as when recorded), the fault armed, ``Guard.transaction`` /
   ``atransaction`` run, and the outcome written to a ledger kept here, out
   of the database: ok (with fn's result), unknown (`CommitOutcomeUnknown`)
   or failed (the exception);
5. check: the table and the notifications read back: every ok present
   exactly once (all its rows, its notification), every failure absent, an
   unknown all or nothing, nothing doubled, and every failure a database
   fault or an outlast error (never a library bug).

`plan` samples the points (CI keeps to a few minutes on two cores), per
style: every protocol message type of each direction, dropped and delivered;
every statement's exchange in each direction; every message of COMMIT's
exchange, dropped and delivered, in every shape whose outcome hangs on it
(with all three endings in the one-INSERT shape); the endings taken in turn
elsewhere; then seeded random points up to the budget. ``OUTLAST_EXPLORE=all``
replays every point, ``OUTLAST_EXPLORE=<n>`` sets the budget.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from explore_styles import CHANNEL, SCHEMA, Target

import outlast
from outlast.chaos import Proxy

SEED_ROWS = 3  # rows of run "seed", counted by the read-only shape
HOWS = ("close", "reset", "terminate")
_MARKER = "pg_current_xact_id_if_assigned"
_BEGIN = re.compile(r"^\s*BEGIN\b", re.IGNORECASE)
_COMMIT = re.compile(r"^\s*COMMIT\b", re.IGNORECASE)


@dataclass(frozen=True)
class Shape:
    """What fn does, and what a committed run leaves behind."""

    steps: tuple[tuple[str, ...], ...]
    rows: dict[str, int] = field(default_factory=dict)  # tag -> n
    notify: bool = False
    value: int | None = None  # fn's result when it returns a count
    fails: bool = False  # the server refuses it at COMMIT


SHAPES: dict[str, Shape] = {
    "insert": Shape((("insert", "a"),), {"a": 0}),
    "several": Shape((("insert", "a"), ("insert", "b"), ("bump", "a")), {"a": 1, "b": 0}),
    "insert_notify": Shape((("insert", "a"), ("notify",)), {"a": 0}, notify=True),
    "notify": Shape((("notify",),), notify=True),
    "savepoint": Shape(
        (("insert", "a"), ("savepoint_rolled_back", "b"), ("savepoint_released", "c")),
        {"a": 0, "c": 0},
    ),
    "read_only": Shape((("count", "seed"),), value=SEED_ROWS),
    "deferred_fail": Shape((("insert", "a"), ("doom",)), fails=True),
}
# Shapes whose every point around COMMIT is replayed in the sampled plan.
COMMIT_SHAPES = ("insert", "insert_notify", "notify", "deferred_fail")


def prepare(dsn: str) -> None:
    """The exploration's tables and the rows the read-only shape counts."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        for i in range(SEED_ROWS):
            conn.execute("INSERT INTO explore_items (run, tag) VALUES ('seed', %s)", (str(i),))


def new_guard() -> outlast.Guard:
    # One fault per run: a retry or two always suffices; the breaker is the default one.
    return outlast.Guard(
        "explore",
        retry=outlast.Retry(
            attempts=6, timeout=20.0, backoff=outlast.Backoff(initial=0.02, cap=0.2)
        ),
        listeners=(),
    )


def sync_fn(style: Any, shape: Shape) -> Callable[[Any, str], Any]:
    def fn(tx: Any, run: str) -> Any:
        value: Any = run
        for op, *args in shape.steps:
            out = getattr(style, op)(tx, run, *args)
            if op == "count":
                value = out
        return value

    return fn


def async_fn(style: Any, shape: Shape) -> Callable[[Any, str], Any]:
    async def fn(tx: Any, run: str) -> Any:
        value: Any = run
        for op, *args in shape.steps:
            out = await getattr(style, op)(tx, run, *args)
            if op == "count":
                value = out
        return value

    return fn


# --------------------------------------------------------------------------- points


@dataclass(frozen=True)
class Point:
    """One fault: the `skip`-th message of `direction` on the run's connection."""

    direction: str
    skip: int
    forward: bool
    how: str
    kind: str  # "upstream P INSERT": direction, message type, the statement it belongs to

    def params(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "skip": self.skip,
            "forward": self.forward,
            "how": self.how,
            "count": 1,
        }

    def __str__(self) -> str:
        lose = "after" if self.forward else "before"
        return f"{self.kind} #{self.skip} ({lose}, {self.how})"


def _statement(sql: str) -> str:
    if _MARKER in sql:
        return "MARKER"
    if "pg_notify" in sql:
        return "NOTIFY"
    word = sql.strip().split(None, 1)[0].upper() if sql.strip() else "EMPTY"
    return word.rstrip(";")


def window(messages: list[dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """The transaction's messages: ``(index in its direction, kind, message)``."""
    sqls = [m.get("sql", "") for m in messages]
    marker = next(i for i, s in enumerate(sqls) if _MARKER in s)
    begin = max(
        i for i in range(marker) if messages[i]["direction"] == "upstream" and _BEGIN.match(sqls[i])
    )
    ready = [i for i in range(begin) if messages[i]["type"] == "Z"]
    start = ready[-1] + 1 if ready else 0
    commit = next(
        i
        for i in range(marker, len(messages))
        if messages[i]["direction"] == "upstream" and _COMMIT.match(sqls[i])
    )
    end = next(
        i
        for i in range(commit, len(messages))
        if messages[i]["direction"] == "downstream" and messages[i]["type"] == "Z"
    )
    seen: Counter[str] = Counter()
    statement = "BEGIN"
    out = []
    for i, message in enumerate(messages):
        direction = message["direction"]
        index = seen[direction]
        seen[direction] += 1
        if direction == "upstream" and sqls[i]:
            statement = _statement(sqls[i])
        if start <= i <= end:
            out.append((index, f"{direction} {message['type']} {statement}", message))
    return out


def all_points(messages: list[dict[str, Any]]) -> list[Point]:
    return [
        Point(m["direction"], index, forward, how, kind)
        for index, kind, m in window(messages)
        for forward in (False, True)
        for how in HOWS
    ]


def plan(
    recordings: dict[str, list[dict[str, Any]]], budget: int | None, seed: int
) -> list[tuple[str, Point]]:
    """The ``(shape, point)`` pairs to replay for one style (`budget` None: all)."""
    every = [(shape, p) for shape, messages in recordings.items() for p in all_points(messages)]
    if budget is None:
        return every
    chosen: dict[tuple[str, Point], None] = {}
    hows = itertools.cycle(HOWS)
    covered: set[tuple[Any, ...]] = set()
    for shape, messages in recordings.items():
        for index, kind, _ in window(messages):
            direction, mtype, statement = kind.split()
            ways = [((direction, mtype, forward), forward) for forward in (False, True)]
            ways.append(((direction, statement), bool(len(covered) % 2)))
            for key, forward in ways:  # each message type both ways; each statement
                if key not in covered:
                    covered.add(key)
                    chosen[(shape, Point(direction, index, forward, next(hows), kind))] = None
    for shape in COMMIT_SHAPES:
        for index, kind, _ in window(recordings.get(shape, [])):
            if kind.endswith(" COMMIT"):
                direction = kind.split()[0]
                for forward in (False, True):
                    for how in HOWS if shape == "insert" else (next(hows),):
                        chosen[(shape, Point(direction, index, forward, how, kind))] = None
    rest = [pair for pair in every if pair not in chosen]
    random.Random(seed).shuffle(rest)
    for pair in rest[: max(0, budget - len(chosen))]:
        chosen[pair] = None
    return list(chosen)


def budget_from_env(default: int) -> int | None:
    value = os.environ.get("OUTLAST_EXPLORE", "").strip().lower()
    if value == "all":
        return None
    return int(value) if value.isdigit() else default


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    run: str
    shape: str
    point: Point | None
    outcome: str = ""  # ok | unknown | failed
    value: Any = None
    error: str = ""
    bug: bool = False  # failed with something that is neither a database fault nor ours
    fault: str = ""  # how outlast classified the error
    fired: bool = True


def _ended(run: Run, exc: BaseException) -> None:
    if isinstance(exc, outlast.CommitOutcomeUnknown):
        run.outcome = "unknown"
    else:
        run.outcome = "failed"
    run.error = f"{type(exc).__module__}.{type(exc).__qualname__}: {str(exc)[:160]}"
    fault = outlast.classify(exc)
    run.fault = "" if fault is None else f"{fault.kind.value}/{fault.reason}"
    run.bug = not isinstance(exc, outlast.OutlastError) and fault is None


def _link_of(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The recorded connection that ran the transaction (the one that read the marker)."""
    ran = [
        link["messages"]
        for link in links
        if any(_MARKER in m.get("sql", "") for m in link["messages"])
    ]
    assert len(ran) == 1, f"{len(ran)} connections read the marker"
    return ran[0]


class Explorer:
    """Records and replays one style's transactions through a private proxy."""

    def __init__(self, style: Any, proxy: Proxy, target: Target) -> None:
        self.style = style
        self.proxy = proxy
        self.target = target
        self.runs: list[Run] = []
        self._ids = itertools.count(1)

    def _new_run(self, shape: str, point: Point | None) -> Run:
        run = Run(f"{self.style.name}:{shape}:{next(self._ids)}", shape, point)
        self.runs.append(run)
        return run

    def _arm(self, point: Point | None) -> None:
        self.proxy.close_connections()  # nothing of the last run may count messages
        if point is not None:
            self.proxy.add_fault("cut_at", **point.params())

    def _disarm(self, run: Run) -> None:
        if run.point is not None and self.proxy.faults():
            run.fired = False
            self.proxy.clear()

    # -- sync -------------------------------------------------------------------

    def run(self, shape: str, point: Point | None) -> Run:
        run = self._new_run(shape, point)
        guard = new_guard()
        self._arm(point)
        source, close = self.style.open(self.target, guard)
        try:
            run.value = guard.transaction(source, sync_fn(self.style, SHAPES[shape]), run.run)
            run.outcome = "ok"
        except Exception as exc:
            _ended(run, exc)
        finally:
            close()
        self._disarm(run)
        return run

    def record(self, shape: str) -> list[dict[str, Any]]:
        with self.proxy.recording() as links:
            self.run(shape, None)
        return _link_of(links)

    def explore(self, budget: int | None) -> int:
        recordings = {shape: self.record(shape) for shape in SHAPES}
        points = plan(recordings, budget, zlib.crc32(self.style.name.encode()))
        for shape, point in points:
            self.run(shape, point)
        return len(points)

    # -- async ------------------------------------------------------------------

    async def arun(self, shape: str, point: Point | None) -> Run:
        run = self._new_run(shape, point)
        guard = new_guard()
        await asyncio.to_thread(self._arm, point)
        source, close = await self.style.open(self.target, guard)
        try:
            fn = async_fn(self.style, SHAPES[shape])
            run.value = await guard.atransaction(source, fn, run.run)
            run.outcome = "ok"
        except Exception as exc:
            _ended(run, exc)
        finally:
            await close()
        await asyncio.to_thread(self._disarm, run)
        return run

    async def arecord(self, shape: str) -> list[dict[str, Any]]:
        with self.proxy.recording() as links:
            await self.arun(shape, None)
        return _link_of(links)

    async def aexplore(self, budget: int | None) -> int:
        recordings = {shape: await self.arecord(shape) for shape in SHAPES}
        points = plan(recordings, budget, zlib.crc32(self.style.name.encode()))
        for shape, point in points:
            await self.arun(shape, point)
        return len(points)


# --------------------------------------------------------------------------- the ledger


@dataclass
class Verdict:
    style: str
    points: int = 0  # fault points replayed
    kinds: int = 0  # distinct message kinds among them
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # ok, but not (all) stored
    doubled: list[str] = field(default_factory=list)  # a row or notification twice
    phantom: list[str] = field(default_factory=list)  # failed, yet (partly) stored
    partial: list[str] = field(default_factory=list)  # unknown, and only part stored
    misjudged: list[str] = field(default_factory=list)  # a bug, a wrong result, a doomed "ok"
    gave_up: list[str] = field(default_factory=list)  # one fault, and still no success
    unfired: list[str] = field(default_factory=list)  # the replay never reached the point
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.doubled
            or self.phantom
            or self.partial
            or self.misjudged
            or self.gave_up
            or self.unfired
        )

    def summary(self) -> str:
        o = self.outcomes
        return (
            f"{self.style}: {self.points} fault points ({self.kinds} message kinds) in"
            f" {self.seconds:.0f}s: ok={o['ok']} failed={o['failed']} unknown={o['unknown']};"
            f" lost={len(self.lost)} doubled={len(self.doubled)} phantom={len(self.phantom)}"
            f" partial={len(self.partial)} misjudged={len(self.misjudged)}"
            f" gave_up={len(self.gave_up)} unfired={len(self.unfired)}"
        )

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "outcomes"}
        out.update(outcomes=dict(self.outcomes), summary=self.summary(), clean=self.clean)
        out["problems"] = self.problems()
        return out

    def problems(self) -> list[str]:
        out = []
        for name in ("lost", "doubled", "phantom", "partial", "misjudged", "gave_up", "unfired"):
            out.extend(f"{name}: {item}" for item in getattr(self, name)[:10])
        return out


def _settle(conn: psycopg.Connection[Any], listener: int, deadline: float) -> None:
    """Wait until no other session is left on the database (cut links end server-side too)."""
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid NOT IN (pg_backend_pid(), %s) AND backend_type = 'client backend'",
            (listener,),
        ).fetchone()
        if row == (0,):
            return
        time.sleep(0.05)


def notifications(conn: psycopg.Connection[Any]) -> Counter[str]:
    """Payloads delivered to `conn` (LISTENing on `CHANNEL`), up to a fence of its own."""
    fence = f"fence-{time.monotonic_ns()}"
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, fence))
    got: Counter[str] = Counter()
    for note in conn.notifies(timeout=30):
        if note.payload == fence:
            return got
        got[note.payload] += 1
    raise AssertionError("the fence notification never arrived")


def check(
    style: str, runs: Iterable[Run], direct: psycopg.Connection[Any], listener: Any
) -> Verdict:
    """Read everything back and judge each run against the ledger."""
    runs = list(runs)
    verdict = Verdict(style)
    _settle(direct, listener.info.backend_pid, time.monotonic() + 30)
    stored: dict[str, dict[str, list[int]]] = {}
    for run, tag, n in direct.execute(
        "SELECT run, tag, n FROM explore_items WHERE run LIKE %s", (f"{style}:%",)
    ):
        stored.setdefault(run, {}).setdefault(tag, []).append(n)
    doomed = Counter(
        r[0]
        for r in direct.execute("SELECT run FROM explore_child WHERE run LIKE %s", (f"{style}:%",))
    )
    notes = notifications(listener)
    kinds = set()
    for run in runs:
        shape = SHAPES[run.shape]
        if run.point is not None:
            verdict.points += 1
            kinds.add(run.point.kind)
            if not run.fired:
                verdict.unfired.append(f"{run.run} {run.point}")
        verdict.outcomes[run.outcome] += 1
        rows = stored.get(run.run, {})
        heard = notes.get(run.run, 0)
        label = f"{run.run} {run.point or 'clean'} -> {run.outcome} {run.error}".strip()
        if any(len(ns) > 1 for ns in rows.values()) or heard > 1:
            verdict.doubled.append(f"{label} rows={rows} notified={heard}")
            continue
        complete = (
            {tag: ns[0] for tag, ns in rows.items()} == shape.rows
            and heard == int(shape.notify)
            and not doomed[run.run]
        )
        empty = not rows and not heard and not doomed[run.run]
        if run.bug or (shape.fails and run.outcome == "ok"):
            verdict.misjudged.append(label)
        elif run.outcome == "failed" and not (shape.fails and run.fault.endswith("_violation")):
            # One fault, then a whole re-run on a new connection: it must succeed (a
            # doomed shape must fail with the server's own refusal).
            verdict.gave_up.append(label)
        elif run.outcome == "ok" and shape.value is not None and run.value != shape.value:
            verdict.misjudged.append(f"{label} value={run.value!r}")
        if run.outcome == "ok" and not complete:
            verdict.lost.append(f"{label} rows={rows} notified={heard}")
        elif run.outcome == "failed" and not empty:
            verdict.phantom.append(f"{label} rows={rows} notified={heard}")
        elif run.outcome == "unknown" and not (complete or empty):
            verdict.partial.append(f"{label} rows={rows} notified={heard}")
    verdict.kinds = len(kinds)
    return verdict


def listen(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def django_child(server: Any, dbname: str, mode: str, budget: int | None = None) -> dict[str, Any]:
    """Run `explore_django` (Django's settings are per process) and return its JSON line."""
    child = Path(__file__).with_name("explore_django.py")
    size = "all" if budget is None else str(budget)
    args = [sys.executable, str(child), server.host, str(server.port), dbname, mode, size]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
