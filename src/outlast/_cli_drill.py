"""Registers ``outlast drill`` (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse

from .cli import subcommand


@subcommand
def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "drill",
        help="drive a running service through database outages and score it",
        description="Send steady traffic to a service while a chaos proxy breaks its "
        "database, then check: no 500s, 503s with Retry-After, no request past its "
        "budget, liveness up, background loop alive, recovery, no write lost or doubled. "
        "Exit code 1 when any check fails.",
    )
    from .drill._cli import add_arguments

    add_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .drill._cli import run_command

    return run_command(args)
