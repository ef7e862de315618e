"""One validation rule: every invalid setting is a `ConfigurationError` naming it,
and every duration accepts seconds or a `timedelta` (pure logic).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

import outlast
from outlast import Backoff, Breaker, Hardening, Retry
from outlast._core.timing.budget import RequestBudget
from outlast._core.web.options import WebConfig
from outlast.supervise import AsyncSupervisor, Supervisor

TD = timedelta(milliseconds=1500)

# (what, build it with `value` for one duration option, read the option back)
DURATIONS: list[tuple[str, Callable[[Any], Any], Callable[[Any], float | None]]] = [
    ("Backoff.initial", lambda v: Backoff(initial=v, cap=10), lambda o: o.initial),
    ("Backoff.cap", lambda v: Backoff(cap=v), lambda o: o.cap),
    ("Retry.timeout", lambda v: Retry(timeout=v), lambda o: o.timeout),
    ("Breaker.window", lambda v: Breaker(window=v), lambda o: o.window),
    ("Breaker.open_for", lambda v: Breaker(open_for=v), lambda o: o.open_for),
    ("Breaker.max_open_for", lambda v: Breaker(max_open_for=v), lambda o: o.max_open_for),
    ("Breaker.probe_timeout", lambda v: Breaker(probe_timeout=v), lambda o: o.probe_timeout),
    (
        "Hardening.connect_timeout",
        lambda v: Hardening(connect_timeout=v),
        lambda o: o.connect_timeout,
    ),
    (
        "Hardening.statement_timeout",
        lambda v: Hardening(statement_timeout=v),
        lambda o: o.statement_timeout,
    ),
    ("Hardening.ping_timeout", lambda v: Hardening(ping_timeout=v), lambda o: o.ping_timeout),
    ("Hardening.pool_timeout", lambda v: Hardening(pool_timeout=v), lambda o: o.pool_timeout),
    ("Hardening.max_lifetime", lambda v: Hardening(max_lifetime=v), lambda o: o.max_lifetime),
    ("Hardening.deadline_grace", lambda v: Hardening(deadline_grace=v), lambda o: o.deadline_grace),
    ("RequestBudget", RequestBudget, lambda o: o.seconds),
    ("web budget", lambda v: WebConfig(budget=v), lambda o: o.budget),
    ("web health_timeout", lambda v: WebConfig(health_timeout=v), lambda o: o.health_timeout),
    ("web attempt_reserve", lambda v: WebConfig(attempt_reserve=v), lambda o: o.attempt_reserve),
    ("Supervisor.within", lambda v: Supervisor(within=v), lambda o: o._within),
    ("Supervisor.stop_timeout", lambda v: Supervisor(stop_timeout=v), lambda o: o.stop_timeout),
    (
        "AsyncSupervisor.stop_timeout",
        lambda v: AsyncSupervisor(stop_timeout=v),
        lambda o: o.stop_timeout,
    ),
    ("loop every", lambda v: outlast.loop(every=v)(lambda: None), lambda o: o.every),
]


@pytest.mark.parametrize(("what", "build", "read"), DURATIONS, ids=[d[0] for d in DURATIONS])
def test_every_duration_accepts_seconds_and_timedelta(
    what: str, build: Callable[[Any], Any], read: Callable[[Any], float | None]
) -> None:
    assert read(build(1.5)) == 1.5
    assert read(build(TD)) == 1.5
    assert read(build(2)) == 2.0


@pytest.mark.parametrize(("what", "build", "read"), DURATIONS, ids=[d[0] for d in DURATIONS])
def test_every_bad_duration_is_a_configuration_error(
    what: str, build: Callable[[Any], Any], read: Callable[[Any], float | None]
) -> None:
    for bad in (-1, float("nan"), float("inf"), "1.5", True):
        with pytest.raises(outlast.ConfigurationError) as info:
            build(bad)
        assert isinstance(info.value, ValueError)  # old `except ValueError` still catches it


# Settings that are not durations, each invalid.
INVALID: list[tuple[str, Callable[[], object]]] = [
    ("Guard name", lambda: outlast.Guard("")),
    ("Guard retry", lambda: outlast.Guard("g", retry=3)),  # type: ignore[arg-type]
    ("Guard breaker", lambda: outlast.Guard("g", breaker="open")),  # type: ignore[arg-type]
    ("Guard classifier", lambda: outlast.Guard("g", classifier=42)),  # type: ignore[arg-type]
    ("Backoff multiplier", lambda: Backoff(multiplier=0.5)),
    ("Backoff jitter", lambda: Backoff(jitter=2)),
    ("Retry attempts", lambda: Retry(attempts=0)),
    ("Retry backoff", lambda: Retry(backoff=1)),  # type: ignore[arg-type]
    ("Breaker failure_rate", lambda: Breaker(failure_rate=0)),
    ("Breaker min_calls", lambda: Breaker(min_calls=0)),
    ("Hardening keepalives", lambda: Hardening(keepalives_idle=0)),
    ("Hardening replace", lambda: Hardening().replace(nonsense=1)),
    ("preset name", lambda: outlast.preset_for(None, "no-such-preset")),
    ("web db_routes", lambda: WebConfig(db_routes="some")),  # type: ignore[arg-type]
    ("web exempt", lambda: WebConfig(exempt=[1])),  # type: ignore[list-item]
    ("web ping", lambda: WebConfig(ping=3)),  # type: ignore[arg-type]
    ("web unknown option", lambda: WebConfig.from_options({"budgett": 3})),
    ("Supervisor on_failure", lambda: Supervisor(on_failure="restart")),  # type: ignore[arg-type]
    ("wait driver", lambda: outlast.wait_for_database("host=x", driver="odbc")),
    ("wait backoff", lambda: outlast.wait_for_database("host=x", backoff=1)),  # type: ignore[arg-type]
    ("DSN", lambda: outlast.parse_dsn("postgresql://x:1:2:3/db")),
]


@pytest.mark.parametrize(("what", "build"), INVALID, ids=[i[0] for i in INVALID])
def test_every_invalid_setting_is_a_configuration_error(
    what: str, build: Callable[[], object]
) -> None:
    with pytest.raises(outlast.ConfigurationError):
        build()
