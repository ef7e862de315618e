"""Registers ``outlast drill`` (heavy imports happen only when it runs).

`lazy_subcommand` also serves ``outlast demo`` (`outlast._cli_demo`).
"""

from __future__ import annotations

import argparse
import importlib

from .cli import subcommand

__all__ = ["lazy_subcommand"]


def lazy_subcommand(name: str, module: str, run: str, *, help: str, description: str) -> None:
    """Register ``outlast <name>``: `module`'s ``add_arguments(parser)`` adds its
    options, and ``<module>.<run>(args) -> int`` runs it (imported only then)."""

    @subcommand
    def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(name, help=help, description=description)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(run=_run)

    def _run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), run)(args)
        return result


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
