"""Registers ``outlast demo`` (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse

from .cli import subcommand


@subcommand
def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="prove it: drill the same service with and without outlast",
        description="Start an embedded PostgreSQL, two chaos proxies, a reference FastAPI "
        "service with outlast and the same service without it, run the outage drill on "
        "both and print the scorecards; writes outlast-report.html. Exit code 0 when the "
        "service with outlast passes every check.",
    )
    from .demo._demo import add_arguments

    add_arguments(p)
    p.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from .demo._demo import run_demo

    return run_demo(args)
