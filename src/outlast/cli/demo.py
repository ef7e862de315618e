"""Registers ``outlast demo`` (heavy imports happen only when it runs)."""

from __future__ import annotations

from outlast.cli import lazy_subcommand

lazy_subcommand(
    "demo",
    "outlast.demo._demo",
    "run_demo",
    help="prove it: drill the same service with and without outlast",
    description="Start an embedded PostgreSQL, two chaos proxies, a reference FastAPI "
    "service with outlast and the same service without it, run the outage drill on "
    "both and print the scorecards; writes outlast-report.html. Exit code 0 when the "
    "service with outlast passes every check.",
)
