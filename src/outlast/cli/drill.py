"""Registers ``outlast drill`` (heavy imports happen only when it runs)."""

from __future__ import annotations

from outlast.cli import lazy_subcommand

lazy_subcommand(
    "drill",
    "outlast.drill._cli",
    "run_command",
    help="drive a running service through database outages and score it",
    description="Send steady traffic to a service while a chaos proxy breaks its "
    "database, then check: no 500s, 503s with Retry-After, no request past its "
    "budget, liveness up, background loop alive, recovery, no write lost or doubled. "
    "Exit code 1 when any check fails.",
)
