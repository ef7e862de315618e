"""The machinery of the generated classification corpus (`test_fault_corpus.py`).

A `Scenario` is one real fault (a proxy fault, a login rejection, a server
stopped under a statement, a PgBouncer error...) with the truth about it:
an *outage* (transient, counted by the breaker), a *permanent* fault (never
retried, never counted), a server-side *timeout*, a *conflict*, a *remote*
server's failure, or *benign* (no error at all). `run_scenario` plays it
against every driver at once -- psycopg 3, psycopg2, asyncpg, and SQLAlchemy
over each -- each in its own thread with its own connection, and `judge`
compares what `outlast.classify` says with the truth.

Set ``OUTLAST_FAULT_CORPUS=<file>`` to also write every case as a JSON line
(driver, scenario, exception class, SQLSTATE, the Fault; messages redacted).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg

import outlast
from outlast import FaultKind

DRIVERS = (
    "psycopg",
    "psycopg2",
    "asyncpg",
    "sqlalchemy+psycopg",
    "sqlalchemy+psycopg2",
    "sqlalchemy+asyncpg",
)
LIBPQ_DRIVERS = tuple(d for d in DRIVERS if "asyncpg" not in d)

Truth = Literal["outage", "permanent", "timeout", "conflict", "remote", "benign", "not_permanent"]
Step = str | Callable[[], object]

CASE_TIMEOUT = 40.0  # one driver's case, whatever happens (a hang is a failure)


@dataclass(frozen=True)
class Target:
    """Where and how to connect: libpq keywords, and asyncpg's where they differ."""

    host: str
    port: int
    user: str = "postgres"
    dbname: str = "postgres"
    password: str | None = None
    libpq: dict[str, str] = field(default_factory=dict)  # extra libpq keywords
    asyncpg: dict[str, Any] = field(default_factory=dict)  # extra asyncpg.connect keywords
    connect_timeout: int = 2


@dataclass
class Scenario:
    """One real fault, played against `drivers`."""

    group: str
    name: str
    truth: Truth
    target: Target
    steps: Sequence[Step] = ("SELECT 1",)
    drivers: Sequence[str] = DRIVERS
    during_commit: bool = False
    # Called once every driver's backend is inside pg_sleep (see `sleepers_on`).
    strike: Callable[[], object] | None = None
    sleepers_on: str | None = None  # a DSN to watch pg_stat_activity through
    setup: Callable[[], object] | None = None
    teardown: Callable[[], object] | None = None


@dataclass
class Verdict:
    group: str
    scenario: str
    driver: str
    truth: Truth
    problem: str | None
    fault: outlast.Fault | None
    exc: BaseException | None


@dataclass
class Tally:
    verdicts: list[Verdict] = field(default_factory=list)

    def add(self, verdicts: list[Verdict]) -> None:
        self.verdicts.extend(verdicts)
        out = os.environ.get("OUTLAST_FAULT_CORPUS")
        if out:
            with open(out, "a", encoding="utf-8") as f:
                for v in verdicts:
                    f.write(json.dumps(_record(v)) + "\n")

    def problems(self) -> list[str]:
        return [
            f"{v.group} / {v.scenario} / {v.driver}: {v.problem}"
            for v in self.verdicts
            if v.problem
        ]

    def summary(self) -> str:
        by_group = Counter(v.group for v in self.verdicts)
        by_truth = Counter(v.truth for v in self.verdicts)
        scenarios = len({(v.group, v.scenario) for v in self.verdicts})
        lines = [
            f"classification corpus: {len(self.verdicts)} cases "
            f"({scenarios} faults x up to {len(DRIVERS)} drivers), "
            f"{len(self.problems())} misjudged",
            "  by source: " + ", ".join(f"{g} {n}" for g, n in sorted(by_group.items())),
            "  by truth:  " + ", ".join(f"{t} {n}" for t, n in sorted(by_truth.items())),
        ]
        return "\n".join(lines)


def _record(v: Verdict) -> dict[str, Any]:
    fault = v.fault
    exc = v.exc
    return {
        "group": v.group,
        "scenario": v.scenario,
        "driver": v.driver,
        "truth": v.truth,
        "exception": None if exc is None else f"{type(exc).__module__}.{type(exc).__qualname__}",
        "fault": None
        if fault is None
        else {
            "kind": fault.kind.name,
            "reason": fault.reason,
            "sqlstate": fault.sqlstate,
            "phase": fault.phase,
            "transient": fault.transient,
            "message": fault.message,
        },
        "problem": v.problem,
    }


# ------------------------------------------------------------------ judging

_OUTAGE_KINDS = (FaultKind.UNAVAILABLE, FaultKind.READ_ONLY, FaultKind.COMMIT_UNKNOWN)
_JUDGE = outlast.Guard("corpus")  # only for evidence(): never called


def judge(scenario: Scenario, driver: str, exc: BaseException | None) -> Verdict:
    truth = scenario.truth

    def verdict(problem: str | None, fault: outlast.Fault | None = None) -> Verdict:
        return Verdict(scenario.group, scenario.name, driver, truth, problem, fault, exc)

    if exc is None:
        return verdict(None if truth == "benign" else "no error was raised: the fault never struck")
    if isinstance(exc, _Hung):
        return verdict(str(exc))
    if truth == "benign":
        return verdict(
            f"benign fault raised {type(exc).__name__}: {outlast.redact(str(exc))[:200]}"
        )
    fault = outlast.classify(exc, during_commit=scenario.during_commit)
    if fault is None:
        return verdict(f"not classified: {type(exc).__name__}: {outlast.redact(str(exc))[:200]}")
    evidence = _JUDGE.evidence(fault)
    ok = {
        "outage": fault.kind in _OUTAGE_KINDS
        and (fault.transient or fault.kind is FaultKind.COMMIT_UNKNOWN)
        and evidence is False,
        "permanent": fault.kind is FaultKind.PERMANENT
        and not fault.transient
        and evidence is not False,
        "timeout": fault.kind is FaultKind.TIMEOUT and evidence is not False,
        "conflict": fault.kind is FaultKind.CONFLICT and fault.transient and evidence is True,
        "remote": fault.reason == "remote_unavailable" and fault.transient and evidence is True,
        # A session the server ended with a timeout: psycopg2's libpq often
        # reports only the lost connection. Anything but "permanent".
        "not_permanent": fault.kind is not FaultKind.PERMANENT and fault.transient in (True, False),
    }[truth]
    problem = (
        None
        if ok
        else (
            f"expected {truth}, got {fault.kind.name} {fault.reason} "
            f"(transient={fault.transient}, evidence={evidence}, phase={fault.phase}) "
            f"from {type(exc).__name__}"
        )
    )
    return verdict(problem, fault)


# ------------------------------------------------------------------ running


class _Hung(Exception):
    pass


def _sa_url(driver: str, t: Target) -> Any:
    import sqlalchemy as sa

    return sa.URL.create(
        f"postgresql+{driver.partition('+')[2]}",
        username=t.user,
        password=t.password,
        host=t.host,
        port=t.port,
        database=t.dbname,
    )


def _libpq_kwargs(t: Target, app: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "host": t.host,
        "port": t.port,
        "user": t.user,
        "dbname": t.dbname,
        "connect_timeout": t.connect_timeout,
        "application_name": app,
    }
    if t.password is not None:
        kw["password"] = t.password
    kw.update(t.libpq)
    return kw


def _asyncpg_kwargs(t: Target, app: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "host": t.host,
        "port": t.port,
        "user": t.user,
        "database": t.dbname,
        "timeout": t.connect_timeout,
        "server_settings": {"application_name": app},
    }
    if t.password is not None:
        kw["password"] = t.password
    extra = dict(t.asyncpg)
    if "server_settings" in extra:
        kw["server_settings"].update(extra.pop("server_settings"))
    kw.update(extra)
    return kw


def _run_steps_sync(execute: Callable[[str], object], steps: Sequence[Step]) -> None:
    for step in steps:
        if isinstance(step, str):
            execute(step)
        else:
            step()


def attempt(driver: str, t: Target, steps: Sequence[Step], app: str) -> None:
    """Connect with `driver` and run `steps` in one transaction; let the error out."""
    if driver == "psycopg":
        with psycopg.connect(**_libpq_kwargs(t, app)) as conn:
            _run_steps_sync(conn.execute, steps)
    elif driver == "psycopg2":
        import psycopg2

        conn2 = psycopg2.connect(**_libpq_kwargs(t, app))
        try:
            _run_steps_sync(conn2.cursor().execute, steps)
        finally:
            conn2.close()
    elif driver == "asyncpg":
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(**_asyncpg_kwargs(t, app))
            try:
                await conn.execute("BEGIN")
                for step in steps:
                    await conn.execute(step) if isinstance(step, str) else step()
            finally:
                conn.terminate()

        asyncio.run(run())
    elif driver == "sqlalchemy+asyncpg":
        import sqlalchemy as sa
        from sqlalchemy.ext.asyncio import create_async_engine

        async def run_sa() -> None:
            kw = _asyncpg_kwargs(t, app)
            for key in ("host", "port", "user", "database", "password"):
                kw.pop(key, None)
            engine = create_async_engine(_sa_url(driver, t), connect_args=kw)
            try:
                async with engine.connect() as c:
                    for step in steps:
                        await c.execute(sa.text(step)) if isinstance(step, str) else step()
            finally:
                await engine.dispose()

        asyncio.run(run_sa())
    elif driver.startswith("sqlalchemy+"):
        import sqlalchemy as sa

        kw = _libpq_kwargs(t, app)
        for key in ("host", "port", "user", "dbname", "password"):
            kw.pop(key, None)
        engine = sa.create_engine(_sa_url(driver, t), connect_args=kw, poolclass=sa.NullPool)
        try:
            with engine.connect() as c:
                _run_steps_sync(lambda sql: c.execute(sa.text(sql)), steps)
        finally:
            engine.dispose()
    else:  # pragma: no cover - test bug
        raise AssertionError(driver)


def _wait_for_sleepers(dsn: str, apps: list[str], timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        while time.monotonic() < deadline:
            (n,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event = 'PgSleep' AND application_name = ANY(%s)",
                (apps,),
            ).fetchone() or (0,)
            if n >= len(apps):
                return
            time.sleep(0.02)


def run_scenario(scenario: Scenario, pool: ThreadPoolExecutor) -> list[Verdict]:
    """Play `scenario` against each of its drivers at once; judge each outcome."""
    if scenario.setup is not None:
        scenario.setup()
    try:
        apps = {d: f"corpus-{uuid.uuid4().hex[:10]}" for d in scenario.drivers}

        def one(driver: str) -> BaseException | None:
            try:
                attempt(driver, scenario.target, scenario.steps, apps[driver])
            except Exception as exc:
                return exc
            return None

        futures = {d: pool.submit(one, d) for d in scenario.drivers}
        if scenario.strike is not None:
            assert scenario.sleepers_on is not None
            _wait_for_sleepers(scenario.sleepers_on, list(apps.values()))
            scenario.strike()
        results: dict[str, BaseException | None] = {}
        for driver, future in futures.items():
            try:
                results[driver] = future.result(CASE_TIMEOUT)
            except TimeoutError:
                results[driver] = _Hung(f"hung for more than {CASE_TIMEOUT:g}s")
    finally:
        if scenario.teardown is not None:
            scenario.teardown()
    return [judge(scenario, d, results[d]) for d in scenario.drivers]


@dataclass
class Holder:
    """Keeps helper connections (a lock, a busy slot) open in a thread until released."""

    dsn: str
    statements: Sequence[str]
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            with psycopg.connect(self.dsn, connect_timeout=5) as conn:
                for sql in self.statements:
                    conn.execute(sql)
                self._ready.set()
                self._stop.wait(60)
                conn.rollback()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("helper connection not ready")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(20)
