"""The web options are declared once and every framework takes all of them (pure logic)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import outlast
from outlast._core.web.options import OPTION_NAMES, WebConfig, WebOptions


def _ping() -> None:
    return None


def _ready() -> bool:
    return True


GUARD = outlast.Guard("options", listeners=())
SUPERVISOR = object()
SESSION = object()
ENGINE = object()

# One non-default value per option, and what the validated config holds for it.
SAMPLES: dict[str, tuple[Any, Any]] = {
    "guard": (GUARD, GUARD),
    "budget": (timedelta(seconds=3), 3.0),
    "health_prefix": ("/_status/", "/_status"),
    "ready_fail_on_db": (True, True),
    "supervisor": (SUPERVISOR, SUPERVISOR),
    "session": (SESSION, SESSION),
    "engine": (ENGINE, ENGINE),
    "ping": (_ping, _ping),
    "db_routes": ("marked", "marked"),
    "exempt": (["/api/ping", "/static"], ("/api/ping", "/static")),
    "admission": ("before_view", "before_view"),
    "answer_margin": (timedelta(milliseconds=100), 0.1),
    "health_timeout": (0.5, 0.5),
    "ready": (_ready, _ready),
    "attempt_reserve": (timedelta(milliseconds=250), 0.25),
    "record_faults": (False, False),
}


def test_the_options_are_declared_once_and_the_config_holds_each() -> None:
    declared = WebOptions.__required_keys__ | WebOptions.__optional_keys__
    assert set(declared) == set(OPTION_NAMES) == set(SAMPLES)
    defaults = WebConfig()
    assert (defaults.budget, defaults.db_routes, defaults.health_prefix) == (5.0, "all", "/health")


def _flask(options: dict[str, Any]) -> WebConfig:
    flask = pytest.importorskip("flask")
    from outlast.flask import Outlast

    return Outlast(flask.Flask("options"), **options).config


def _starlette(options: dict[str, Any]) -> WebConfig:
    starlette = pytest.importorskip("starlette.applications")
    from outlast.starlette import install

    return install(starlette.Starlette(), **options).config


def _django(options: dict[str, Any]) -> WebConfig:
    pytest.importorskip("django")
    from outlast.django._middleware import Runtime

    return Runtime({name.upper(): value for name, value in options.items()}).config


FRAMEWORKS = {"flask": _flask, "starlette": _starlette, "django": _django}


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_every_framework_takes_every_option(framework: str) -> None:
    config = FRAMEWORKS[framework]({name: given for name, (given, _) in SAMPLES.items()})
    for name, (_, held) in SAMPLES.items():
        assert getattr(config, name) == held, name


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_an_unknown_or_invalid_option_is_a_configuration_error(framework: str) -> None:
    with pytest.raises(outlast.ConfigurationError, match="(?i)budgett"):
        FRAMEWORKS[framework]({"budgett": 3.0})
    with pytest.raises(outlast.ConfigurationError, match="(?i)health_timeout"):
        FRAMEWORKS[framework]({"health_timeout": -1})


def test_django_takes_dotted_paths_for_objects() -> None:
    pytest.importorskip("django")
    from outlast.django._middleware import Runtime

    runtime = Runtime({"GUARD": f"{__name__}.GUARD", "READY": f"{__name__}._ready"})
    assert runtime.guard is GUARD and runtime.ready is _ready


def test_the_integrations_default_to_the_web_guard() -> None:
    """Without guard=, a web integration recovers in about half a second (Guard.for_web)."""
    flask = pytest.importorskip("flask")
    fastapi = pytest.importorskip("fastapi")
    from outlast.flask import Outlast
    from outlast.starlette import install

    web = outlast.Guard.for_web("web")
    assert (web.breaker.open_for, web.breaker.max_open_for) == (0.5, 0.5)
    assert web.breaker.failure_threshold == 3 and web.retry.backoff.cap == 0.5
    made = [
        Outlast(flask.Flask("defaults")).guard,
        install(fastapi.FastAPI()).guard,
    ]
    for guard in made:
        assert (guard.breaker.open_for, guard.breaker.max_open_for) == (0.5, 0.5)
    # Every option can still be replaced.
    custom = outlast.Guard.for_web("web", breaker=outlast.Breaker(open_for=2.0))
    assert custom.breaker.open_for == 2.0


def test_the_answer_margin_keeps_the_work_inside_the_budget() -> None:
    from outlast._core.timing.budget import RequestBudget, budget_remaining

    for budget, margin in ((5.0, 0.2), (1.0, 0.2), (0.5, 0.1)):
        rb = RequestBudget(budget)
        assert rb.margin == pytest.approx(margin)
        token = rb.start()
        try:
            left = budget_remaining()
            assert left is not None and left <= budget - margin
        finally:
            RequestBudget.finish(token)
    with pytest.raises(outlast.ConfigurationError):
        WebConfig(budget=1.0, answer_margin=1.0)
