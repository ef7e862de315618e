"""The ``outlast`` command.

Every subcommand is one row of `COMMANDS`: its name, its help, and the module
that implements it with ``add_arguments(parser)`` and ``run(args) -> int``.
The module is imported only to build its sub-parser; heavy imports (drivers,
web frameworks, rich) stay inside ``run``, so ``outlast --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from outlast import __version__

__all__ = ["COMMANDS", "Command", "build_parser", "fail", "main"]

Runner = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One ``outlast <name>`` subcommand, implemented by `module`."""

    name: str
    module: str
    help: str
    description: str
    run: str = "run"  # the function of `module` that runs it
    arguments: str = "add_arguments"  # the function of `module` that adds its options


COMMANDS: tuple[Command, ...] = (
    Command(
        "proxy",
        "outlast.cli.proxy",
        help="run the fault-injecting PostgreSQL proxy with its admin API",
        description="Forward --listen to --upstream and inject faults on demand through the "
        "admin HTTP API (see the README: 'Fault-injecting proxy'). Ctrl-C stops it.",
    ),
    Command(
        "drill",
        "outlast.drill._cli",
        run="run_command",
        help="drive a running service through database outages and score it",
        description="Send steady traffic to a service while a chaos proxy breaks its "
        "database, then check: no 500s, 503s with Retry-After, no request past its "
        "budget, liveness up, background loop alive, recovery, no write lost or doubled. "
        "Exit code 1 when any check fails.",
    ),
    Command(
        "demo",
        "outlast.demo._demo",
        run="run_demo",
        help="prove it: drill the same service with outlast, fixed by hand, and without",
        description="Start an embedded PostgreSQL, two chaos proxies, a reference FastAPI "
        "service with outlast and the same service without it, run the outage drill on "
        "both and print the scorecards; writes outlast-report.html. Exit code 0 when the "
        "service with outlast passes every check. With --fleet: run it as containers x "
        "workers against one small server and measure the reconnect storm (login attempts "
        "per second, 53300s, each worker's first 200), plotted to outlast-fleet.svg.",
    ),
    Command(
        "migrate",
        "outlast.migrate._cli",
        run="run_command",
        help="run migrations exactly once across many containers (Alembic, Django, SQL files)",
        description="Bring the schema to its target exactly once, whatever number of "
        "processes start together: a session advisory lock on a dedicated direct connection "
        "(or a lease row behind PgBouncer), an 'already at head?' check without locks, a "
        "client-side deadline. Exit codes: 0 at the target, 1 the wait ran out (the lock's "
        "holder is named), 2 a usage or configuration error, 3 a migration failed.",
    ),
    Command(
        "alerts",
        "outlast.cli.alerts",
        help="print the Prometheus alert rules for services that use outlast",
        description="Print outlast's alert rules (database down, breaker flapping, retry "
        "storm, pool exhausted, background task dead or stalled, COMMIT outcomes unknown, "
        "slow recovery) as a Prometheus rule file: outlast alerts --prometheus > rules.yml",
    ),
    Command(
        "worker",
        "outlast.jobs._cli",
        run="run_worker",
        arguments="add_worker_arguments",
        help="run the handlers of an outlast.jobs queue",
        description="Run a durable job worker: claims jobs (per-key limits enforced in the "
        "claim), heartbeats their leases, rides out database outages, and on SIGTERM finishes "
        "or releases running jobs. Example: outlast worker app.tasks:jobs --concurrency 8",
    ),
    Command(
        "jobs",
        "outlast.jobs._cli",
        run="run_status",
        arguments="add_status_arguments",
        help="show a job queue: depth per kind, oldest job, slots per key, dead letters",
        description="Read-only snapshot of an outlast.jobs queue.",
    ),
    Command(
        "slots",
        "outlast.replication._cli",
        help="check replication slots (WAL retention, time to loss) or a CDC offset",
        description="Report every replication slot's retained WAL, wal_status, time to loss "
        "and inactivity against thresholds, or (--offset) whether a change-data-capture "
        "consumer may resume from its stored LSN. Exit 0 ok, 1 warn, 2 critical/lost/unsafe, "
        "3 could not check.",
    ),
    Command(
        "wait",
        "outlast.cli.wait",
        help="wait until PostgreSQL accepts sessions (exit 0), with backoff",
        description="Wait at start-up until the database accepts sessions. Exit 0 when ready, "
        "1 on timeout, 2 at once for a fault waiting cannot fix (authentication "
        "failed, database does not exist) or a malformed DSN.",
    ),
)


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``outlast <command>: <message>`` to stderr and return the exit `code`."""
    print(f"outlast {command}: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The ``outlast`` argument parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="outlast",
        description="Keep PostgreSQL-backed Python services up while their database is not.",
    )
    parser.add_argument("--version", action="version", version=f"outlast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        module = importlib.import_module(command.module)
        child = sub.add_parser(command.name, help=command.help, description=command.description)
        getattr(module, command.arguments)(child)
        child.set_defaults(run=getattr(module, command.run))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``outlast`` command with `argv` (default: ``sys.argv[1:]``); return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Runner | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 0
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
