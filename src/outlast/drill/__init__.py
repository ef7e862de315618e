"""The outage drill: drive a service through database faults while traffic
flows, keep a ledger of every write, and judge the result.

::

    outlast drill --url http://127.0.0.1:8000 --proxy-admin http://127.0.0.1:8474 \\
        --proxy-token "$OUTLAST_PROXY_TOKEN" --scenarios down,blackhole,terminate \\
        --budget 5 --duration 8 --report report.html

    # minutes of faults; passes only if the service's resources stay flat
    outlast drill --url ... --proxy-admin ... --soak 10m --pid "$SERVICE_PID" --dsn "$DSN"

The fleet drill (`run_fleet`, ``outlast demo --fleet``) runs the reference
service as many worker processes against one small server and measures the
reconnect storm; it needs the ``demo`` extra.

Tool layer: needs the ``drill`` extra (``pip install 'outlast[drill]'``: httpx,
rich). The names below are imported on first use, so the command's options
(and ``outlast --help``) work without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from outlast.drill._checks import CHECK_TITLES, Check, ScenarioResult, evaluate
    from outlast.drill._fleet import run_fleet
    from outlast.drill._fleet_model import (
        FLEET_SCENARIOS,
        FleetConfig,
        FleetResult,
        FleetSide,
    )
    from outlast.drill._fleet_plot import fleet_svg
    from outlast.drill._ledger import Ledger, LedgerResult, extract_ids, write_outcome
    from outlast.drill._report import render_html, write_report
    from outlast.drill._route import Route
    from outlast.drill._runner import DrillConfig, DrillResult, DrillRun, run_drill
    from outlast.drill._scenarios import (
        BUILTIN_SCENARIOS,
        FaultWindow,
        Injector,
        Scenario,
        Step,
        builtin,
        load_scenarios,
        resolve,
    )
    from outlast.drill._soak import SoakConfig, SoakResult, SoakRun, run_soak
    from outlast.drill._soak_report import write_soak_report
    from outlast.drill._traffic import RequestRecord, Traffic, background_status

_EXPORTS = {
    "BUILTIN_SCENARIOS": "_scenarios",
    "CHECK_TITLES": "_checks",
    "Check": "_checks",
    "DrillConfig": "_runner",
    "DrillResult": "_runner",
    "DrillRun": "_runner",
    "FLEET_SCENARIOS": "_fleet_model",
    "FaultWindow": "_scenarios",
    "FleetConfig": "_fleet_model",
    "FleetResult": "_fleet_model",
    "FleetSide": "_fleet_model",
    "Injector": "_scenarios",
    "Ledger": "_ledger",
    "LedgerResult": "_ledger",
    "RequestRecord": "_traffic",
    "Route": "_route",
    "Scenario": "_scenarios",
    "ScenarioResult": "_checks",
    "SoakConfig": "_soak",
    "SoakResult": "_soak",
    "SoakRun": "_soak",
    "Step": "_scenarios",
    "Traffic": "_traffic",
    "background_status": "_traffic",
    "builtin": "_scenarios",
    "evaluate": "_checks",
    "extract_ids": "_ledger",
    "fleet_svg": "_fleet_plot",
    "load_scenarios": "_scenarios",
    "render_html": "_report",
    "resolve": "_scenarios",
    "run_drill": "_runner",
    "run_fleet": "_fleet",
    "run_soak": "_soak",
    "write_outcome": "_ledger",
    "write_report": "_report",
    "write_soak_report": "_soak_report",
}

__all__ = [
    "BUILTIN_SCENARIOS",
    "CHECK_TITLES",
    "FLEET_SCENARIOS",
    "Check",
    "DrillConfig",
    "DrillResult",
    "DrillRun",
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
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'outlast.drill' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"outlast.drill.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
