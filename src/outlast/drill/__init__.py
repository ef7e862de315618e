"""The outage drill: drive a service through database faults while traffic
flows, keep a ledger of every write, and judge the result.

::

    outlast drill --url http://127.0.0.1:8000 --proxy-admin http://127.0.0.1:8474 \\
        --scenarios down,blackhole,terminate --budget 5 --duration 8 --report report.html

Tool layer: needs the ``demo`` extra (httpx, rich).
"""

from __future__ import annotations

from outlast.drill._checks import CHECK_TITLES, Check, ScenarioResult, evaluate
from outlast.drill._ledger import Ledger, LedgerResult, extract_ids, write_outcome
from outlast.drill._report import render_html, write_report
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
from outlast.drill._traffic import RequestRecord, Route, Traffic, background_status

__all__ = [
    "BUILTIN_SCENARIOS",
    "CHECK_TITLES",
    "Check",
    "DrillConfig",
    "DrillResult",
    "DrillRun",
    "FaultWindow",
    "Injector",
    "Ledger",
    "LedgerResult",
    "RequestRecord",
    "Route",
    "Scenario",
    "ScenarioResult",
    "Step",
    "Traffic",
    "background_status",
    "builtin",
    "evaluate",
    "extract_ids",
    "load_scenarios",
    "render_html",
    "resolve",
    "run_drill",
    "write_outcome",
    "write_report",
]
