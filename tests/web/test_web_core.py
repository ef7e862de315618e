"""Unit tests for the framework-neutral web pieces (pure logic, no server)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import pytest

import outlast
from outlast._core.faults.fault import Fault, FaultKind
from outlast._core.timing import budget as budgets
from outlast._core.web import calls, mapping, options
from outlast._core.web import health as _health


def _fault(kind: FaultKind, reason: str = "x", message: str = "boom") -> Fault:
    return Fault(kind, reason, None, "statement", kind is not FaultKind.PERMANENT, message)


class _DriverError(Exception):
    """Looks like a driver exception to classify() through a fake classifier."""


@pytest.mark.parametrize(
    ("seconds", "header"),
    [
        (None, "1"),
        (0.0, "1"),
        (-3.0, "1"),
        (0.2, "1"),
        (1.0, "1"),
        (1.01, "2"),
        (2.5, "3"),
        (30.0, "30"),
        (math.nan, "1"),
        (math.inf, "1"),
        (10_000_000.0, "3600"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(
    seconds: float | None, header: str
) -> None:
    assert mapping.retry_after_header(seconds) == header


def test_problem_body_is_rfc9457_and_keeps_the_seeds_fields() -> None:
    assert mapping.problem_body(503) == {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "Database temporarily unavailable",
        "error": "SERVICE_UNAVAILABLE",
    }
    body = mapping.problem_body(500)
    assert body["status"] == 500 and body["type"] == "about:blank"


def test_database_unavailable_maps_to_503_with_its_retry_after() -> None:
    mapped = mapping.map_exception(outlast.DatabaseUnavailable(retry_after=2.2))
    assert mapped is not None and mapped.status == 503
    assert dict(mapped.headers)["Retry-After"] == "3"
    assert json.loads(mapped.body) == mapping.problem_body(503)
    assert mapped.content_type == "application/problem+json"


def test_commit_outcome_unknown_maps_to_503() -> None:
    mapped = mapping.map_exception(outlast.CommitOutcomeUnknown("lost", xid="42"))
    assert mapped is not None and mapped.status == 503
    assert dict(mapped.headers)["Retry-After"] == "1"
    assert mapped.content_type == "application/problem+json"


def test_commit_outcome_unknown_says_so_in_the_problem_body() -> None:
    """A client (and the drill's ledger) must tell "maybe applied" from "not applied"."""
    mapped = mapping.map_exception(outlast.CommitOutcomeUnknown("lost", xid="42"))
    assert mapped is not None
    body = json.loads(mapped.body)
    assert body == mapping.problem_body(503, outcome_unknown=True)
    assert body["error"] == "OUTCOME_UNKNOWN" and body["status"] == 503
    assert "lost" not in mapped.body.decode()  # the exception's text never leaks
    plain = mapping.map_exception(outlast.DatabaseUnavailable(retry_after=1.0))
    assert plain is not None and json.loads(plain.body)["error"] == "SERVICE_UNAVAILABLE"


def test_plain_application_errors_are_not_mapped() -> None:
    assert mapping.map_exception(ValueError("a bug")) is None
    assert mapping.map_exception(KeyError("k")) is None


def test_driver_errors_map_by_fault_kind() -> None:
    kinds = {
        "u": FaultKind.UNAVAILABLE,
        "r": FaultKind.READ_ONLY,
        "c": FaultKind.COMMIT_UNKNOWN,
        "p": FaultKind.PERMANENT,
    }
    guard = outlast.Guard("kinds", classifier=lambda exc: _fault(kinds[str(exc)]), listeners=())
    for key in "urc":
        mapped = mapping.map_exception(_DriverError(key), guard)
        assert mapped is not None and mapped.status == 503, key
        # A COMMIT that lost its connection may have been applied: say so.
        expected = "OUTCOME_UNKNOWN" if key == "c" else "SERVICE_UNAVAILABLE"
        assert json.loads(mapped.body)["error"] == expected, key
    mapped = mapping.map_exception(_DriverError("p"), guard)
    assert mapped is not None and mapped.status == 500
    assert "Retry-After" not in dict(mapped.headers)


def test_a_real_psycopg_error_is_classified_and_mapped() -> None:
    psycopg = pytest.importorskip("psycopg")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect("host=127.0.0.1 port=1 user=x password=hunter2 connect_timeout=2")
    mapped = mapping.map_exception(info.value)
    assert mapped is not None and mapped.status == 503


def test_the_500_body_never_contains_sql_params_or_hosts() -> None:
    secret = "SELECT * FROM users WHERE password = 'hunter2' -- db.internal.example:5432"
    guard = outlast.Guard(
        "secret", classifier=lambda exc: _fault(FaultKind.PERMANENT, message=secret), listeners=()
    )
    mapped = mapping.map_exception(_DriverError(secret), guard)
    assert mapped is not None
    text = mapped.body.decode() + repr(mapped.headers)
    for leak in ("SELECT", "hunter2", "db.internal", "5432", "Traceback"):
        assert leak not in text


def test_faults_are_logged_once_and_redacted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    msg = "connection to postgresql://app:hunter2@db.example/app failed"
    guard = outlast.Guard(
        "log-once", classifier=lambda exc: _fault(FaultKind.PERMANENT, "boom", msg), listeners=()
    )
    exc = _DriverError("x")
    mapped = mapping.map_exception(exc, guard)
    assert mapped is not None
    with caplog.at_level(logging.DEBUG, logger="outlast"):
        mapping.log_fault(exc, mapped, "GET /api/unit-once")
        mapping.log_fault(exc, mapped, "GET /api/unit-once")
    records = [r for r in caplog.records if "/api/unit-once" in r.getMessage()]
    assert len(records) == 1
    assert "hunter2" not in records[0].getMessage()
    assert records[0].exc_info is None


def test_budget_remaining_counts_down_inside_a_request_only() -> None:
    assert budgets.budget_remaining() is None
    budget = budgets.RequestBudget(5.0)
    token = budget.start()
    try:
        left = budgets.budget_remaining()
        assert left is not None and 4.0 < left <= 5.0
    finally:
        budget.finish(token)
    assert budgets.budget_remaining() is None


def test_budget_must_be_positive() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(outlast.ConfigurationError):
            budgets.RequestBudget(bad)


def test_call_within_budget_passes_the_rest_minus_the_reserve() -> None:
    seen: dict[str, float | None] = {}

    class FakeGuard:
        retry_after = 1.0

        def call(self, fn, *args, timeout=None, **kw):  # type: ignore[no-untyped-def]
            seen["timeout"] = timeout
            return fn(*args)

    budget = budgets.RequestBudget(5.0)
    token = budget.start()
    try:
        assert calls.call_within_budget(FakeGuard(), lambda: 7, reserve=2.0) == 7  # type: ignore[arg-type]
    finally:
        budget.finish(token)
    timeout = seen["timeout"]
    assert timeout is not None and 2.5 < timeout <= 3.0


def test_an_exhausted_budget_raises_a_503_error() -> None:
    budget = budgets.RequestBudget(0.01)
    token = budget.start()
    try:
        time.sleep(0.05)
        with pytest.raises(outlast.RequestBudgetExceeded) as info:
            calls.call_within_budget(outlast.Guard("budget-unit"), lambda: 1)
    finally:
        budget.finish(token)
    mapped = mapping.map_exception(info.value)
    assert mapped is not None and mapped.status == 503


def test_routes_all_but_exempt_health_and_no_db() -> None:
    config = options.WebConfig(exempt=("/api/ping",))

    @options.no_db
    def ping() -> None: ...

    @options.db_route
    def leads() -> None: ...

    assert config.is_db_route("/api/leads", None)
    assert not config.is_db_route("/api/ping", None)
    assert not config.is_db_route("/api/ping/x", None)
    assert config.is_db_route("/api/pingpong", None)
    assert not config.is_db_route("/health/db", None)
    assert not config.is_db_route("/anything", ping)
    marked = options.WebConfig(db_routes="marked")
    assert not marked.is_db_route("/api/leads", None)
    assert marked.is_db_route("/api/leads", leads)


def test_liveness_never_fails() -> None:
    status, doc = _health.health_live()
    assert status == 200 and doc["status"] == "pass"


def test_readiness_warns_during_an_outage_and_fails_only_when_asked() -> None:
    guard = outlast.Guard("ready-unit", listeners=())
    status, doc = _health.health_ready(guard)
    assert status == 200 and doc["status"] == "pass"
    guard.record_failure(_ConnRefused())
    assert guard.state.down
    status, doc = _health.health_ready(guard)
    assert status == 200 and doc["status"] == "warn"
    assert doc["checks"]["postgres:connection"][0]["status"] == "warn"
    status, doc = _health.health_ready(guard, fail_on_db=True)
    assert status == 503 and doc["status"] == "fail"


def test_readiness_includes_the_supervisor() -> None:
    class Sup:
        def health(self) -> dict[str, object]:
            return {"status": "fail", "tasks": {"mailer": {"state": "failed"}}}

    status, doc = _health.health_ready(None, supervisor=Sup())
    assert status == 503
    assert doc["checks"]["supervisor:tasks"][0]["componentId"] == "mailer"


def test_health_db_reports_latency_and_outages_without_a_dsn() -> None:
    guard = outlast.Guard("db-unit", listeners=())
    probe = _health.SyncProbe(guard, lambda: None, timeout=2.0)
    status, doc, retry_after = _health.health_db(guard, probe)
    assert status == 200 and retry_after is None
    check = doc["checks"]["postgres:responseTime"][0]
    assert check["observedUnit"] == "ms" and check["outages"] == 0

    def refused() -> None:
        raise _ConnRefused()

    probe = _health.SyncProbe(guard, refused, timeout=2.0)
    status, doc, retry_after = _health.health_db(guard, probe)
    assert status == 503 and retry_after is not None and int(retry_after) >= 1
    check = doc["checks"]["postgres:responseTime"][0]
    assert check["status"] == "fail" and check["outages"] == 1 and check["down_since"]
    assert "hunter2" not in json.dumps(doc) and "db.example" not in json.dumps(doc)


def test_a_stuck_probe_answers_503_within_its_timeout() -> None:
    import threading

    release = threading.Event()
    guard = outlast.Guard("stuck-unit", listeners=())
    probe = _health.SyncProbe(guard, lambda: release.wait(30), timeout=0.2)
    try:
        start = time.monotonic()
        status, _doc, _ra = probe.run()
        assert status == 503 and time.monotonic() - start < 5
        status, _doc, _ra = probe.run()  # still stuck: no second thread, answers at once
        assert status == 503
    finally:
        release.set()


class _ConnRefused(Exception):
    """A psycopg-looking refused connection (classified by message)."""

    __module__ = "psycopg"

    def __init__(self) -> None:
        super().__init__(
            'connection failed: connection to server at "db.example" (10.0.0.1), port 5432 '
            "failed: Connection refused password=hunter2"
        )


_ConnRefused.__name__ = "OperationalError"
_ConnRefused.__qualname__ = "OperationalError"


def test_unmatched_requests_are_never_database_routes() -> None:
    config = options.WebConfig()
    assert not config.is_db_route("/nope", options.NO_ROUTE)
    assert config.is_db_route("/mounted/app", None)


def test_readiness_shows_a_real_supervisors_tasks() -> None:
    from outlast.supervise import Supervisor

    sup = Supervisor()

    def idle(ctx):  # type: ignore[no-untyped-def]
        while ctx.sleep(0.05):
            ctx.beat()

    sup.start("idle", idle, restart="always")
    try:
        status, doc = _health.health_ready(outlast.Guard("sup-unit", listeners=()), supervisor=sup)
    finally:
        sup.stop(timeout=10)
    assert status == 200
    tasks = doc["checks"]["supervisor:tasks"]
    assert [t["componentId"] for t in tasks] == ["idle"]
    assert tasks[0]["status"] == "pass"


def test_web_transaction_passes_the_rest_of_the_budget_minus_the_reserve() -> None:
    from outlast._core.web.base import WebBase
    from outlast.starlette import Outlast

    seen: list[tuple[str, object, float | None]] = []

    class FakeGuard:
        retry_after = 1.0

        def transaction(self, source, fn, *args, timeout=None, **kw):  # type: ignore[no-untyped-def]
            seen.append(("sync", source, timeout))
            return fn("conn", *args)

        async def atransaction(self, source, fn, *args, timeout=None, **kw):  # type: ignore[no-untyped-def]
            seen.append(("async", source, timeout))
            return await fn("conn", *args)

    async def awork(conn: str, x: int) -> tuple[str, int]:
        return conn, x

    web = WebBase(guard=FakeGuard(), budget=5.0, attempt_reserve=2.0)  # type: ignore[arg-type]
    aweb = Outlast(guard=FakeGuard(), budget=5.0, attempt_reserve=1.5)  # type: ignore[arg-type]
    assert web.transaction("engine", lambda conn, x: (conn, x), 1) == ("conn", 1)  # no request
    token = web.budget.start()
    try:
        assert web.transaction("engine", lambda conn, x: (conn, x), 2) == ("conn", 2)
        assert asyncio.run(aweb.atransaction("aengine", awork, 3)) == ("conn", 3)
        assert web.transaction("engine", lambda conn: conn, timeout=0.25) == "conn"
    finally:
        web.budget.finish(token)
    (k0, s0, d0), (k1, s1, d1), (k2, s2, d2), (_k3, _s3, d3) = seen
    assert (k0, s0, d0) == ("sync", "engine", None)
    assert (k1, s1) == ("sync", "engine") and d1 is not None and 2.5 < d1 <= 3.0
    assert (k2, s2) == ("async", "aengine") and d2 is not None and 3.0 < d2 <= 3.5
    assert d3 == 0.25  # an explicit timeout wins


def test_web_transaction_with_no_budget_left_is_a_503_before_anything_runs() -> None:
    from outlast._core.web.base import WebBase

    ran: list[int] = []
    web = WebBase(guard=outlast.Guard("tx-budget-unit", listeners=()), budget=0.01)
    token = web.budget.start()
    try:
        time.sleep(0.05)
        with pytest.raises(outlast.RequestBudgetExceeded):
            web.transaction(object(), lambda conn: ran.append(1))
    finally:
        web.budget.finish(token)
    assert ran == []
