"""``outlast migrate``: run migrations exactly once from every container's entrypoint.

::

    outlast migrate --dsn "$DATABASE_URL" -- alembic upgrade head && exec gunicorn app:app
    outlast migrate --role wait --wait 120 --django && exec celery -A app worker
    outlast migrate --sql migrations/

Exit codes: 0 the schema is at its target (this process applied it, another
did, or it already was); 1 the wait ran out (the lock's holder, or what is
pending, is printed); 2 a usage or configuration error (malformed DSN, a
transaction pooler as the lock DSN, a broken migrations folder); 3 a
migration failed (its transactional steps were rolled back). Nothing printed
contains a password.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import outlast

__all__ = ["add_arguments", "run_command"]

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_USAGE = 2
EXIT_FAILED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``outlast migrate``."""
    parser.add_argument(
        "--dsn",
        default=None,
        help="the database (default: the tool's own URL, $OUTLAST_DSN, $DATABASE_URL)",
    )
    parser.add_argument(
        "--lock-dsn",
        default=None,
        help="a direct endpoint for the lock session when --dsn goes through a pooler"
        " (default: $OUTLAST_MIGRATE_LOCK_DSN, then --dsn)",
    )
    parser.add_argument(
        "--role",
        choices=["migrate", "wait"],
        default=None,
        help="migrate (may take the lock) or wait (only waits for the schema);"
        " default: $OUTLAST_MIGRATE / $RUN_MIGRATIONS (1/0), else migrate",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to reach the target (default: $OUTLAST_MIGRATE_WAIT, else 120)",
    )
    parser.add_argument(
        "--lock",
        choices=["advisory", "lease"],
        default=None,
        help="advisory (default; a direct connection) or lease (works through PgBouncer"
        " in transaction mode); every process must use the same",
    )
    parser.add_argument("--name", default="default", help="the lock's name (default: default)")
    parser.add_argument(
        "--lease", type=float, default=10.0, help="seconds a silent holder keeps the lock (10)"
    )
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between checks (0.5)")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=None,
        help="lock_timeout of the DDL session, set once the lock is held (seconds)",
    )
    parser.add_argument(
        "--statement-timeout",
        type=float,
        default=None,
        help="statement_timeout of the DDL session, set once the lock is held (seconds)",
    )
    tool = parser.add_argument_group("what to run (one of)")
    tool.add_argument(
        "--django", action="store_true", help="Django's migrate (DJANGO_SETTINGS_MODULE)"
    )
    tool.add_argument("--settings", default=None, help="Django settings module")
    tool.add_argument("--database", default="default", help="Django database alias (default)")
    tool.add_argument("--sql", metavar="DIR", default=None, help="a folder of NNNN_name.sql files")
    tool.add_argument(
        "--table",
        default="outlast_schema_migrations",
        help="version table of --sql (outlast_schema_migrations)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--json", action="store_true", help="print the outcome as one JSON line on stdout"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="after --: alembic [-c alembic.ini] [-n section] [-x k=v] upgrade <target>",
    )


def _fail(message: str, code: int) -> int:
    print(f"outlast migrate: {outlast.redact(message)}", file=sys.stderr, flush=True)
    return code


def _alembic_runner(argv: list[str]) -> Any:
    from alembic.config import CommandLine, Config

    from ._alembic import AlembicRunner

    if argv[:3] == ["python", "-m", "alembic"]:
        argv = argv[3:]
    elif argv and os.path.basename(argv[0]) == "alembic":
        argv = argv[1:]
    else:
        raise outlast.ConfigurationError(
            "after -- give an Alembic command line: alembic [options] upgrade <target>"
            " (or use --django / --sql DIR)"
        )
    cli = CommandLine(prog="alembic")
    try:
        options = cli.parser.parse_args(argv)
    except SystemExit:
        raise outlast.ConfigurationError("not a valid alembic command line") from None
    cmd = getattr(options, "cmd", None)
    if cmd is None or getattr(cmd[0], "__name__", "") != "upgrade":
        raise outlast.ConfigurationError(
            "only 'alembic upgrade <target>' runs under outlast migrate"
        )
    if getattr(options, "sql", False):
        raise outlast.ConfigurationError("alembic --sql (offline mode) needs no lock")
    names = list(options.config or [])
    toml = next((n for n in names if os.path.basename(n) == "pyproject.toml"), "pyproject.toml")
    ini = next(
        (n for n in names if os.path.basename(n) != "pyproject.toml"),
        os.environ.get("ALEMBIC_CONFIG", "alembic.ini"),
    )
    if not os.path.isfile(ini) and not os.path.isfile(toml):
        raise outlast.ConfigurationError(f"no Alembic configuration at {ini!r}")
    config = Config(
        file_=ini if os.path.isfile(ini) else None,
        toml_file=toml,
        ini_section=options.name,
        cmd_opts=options,
    )
    return AlembicRunner(config, target=options.revision)


def _runner(args: argparse.Namespace) -> Any:
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    chosen = [bool(args.django), bool(args.sql), bool(command)]
    if sum(chosen) != 1:
        raise outlast.ConfigurationError(
            "say what to run: -- alembic upgrade head, --django, or --sql DIR (exactly one)"
        )
    if args.django:
        from ._django import DjangoRunner

        return DjangoRunner(database=args.database, settings=args.settings)
    if args.sql:
        from ._sql import SqlRunner

        return SqlRunner(args.sql, table=args.table)
    return _alembic_runner(command)


def _configure_logging(quiet: bool) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("outlast")
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    return handler


def run_command(args: argparse.Namespace) -> int:
    """Run ``outlast migrate``; the exit code (see the module docstring)."""
    from ._errors import MigrationFailed, MigrationTimeout
    from ._run import run

    handler = _configure_logging(args.quiet)
    started = time.time()
    result: dict[str, Any] = {"outcome": None, "exit": None}
    try:
        try:
            runner = _runner(args)
            importlib.import_module("outlast.psycopg")  # the lock session's driver, up front

            result["started_at"] = time.time()  # imports done: from here it waits
            status = run(
                runner,
                dsn=args.dsn,
                lock_dsn=args.lock_dsn,
                role=args.role,
                wait=args.wait,
                lock=args.lock,
                name=args.name,
                lease=args.lease,
                poll=args.poll,
                lock_timeout=args.lock_timeout,
                statement_timeout=args.statement_timeout,
            )
        except ModuleNotFoundError as exc:
            code = _fail(f"{exc.name} is not installed (pip install 'outlast[migrate]')", 2)
            result.update(exit=code, error="missing_package")
            return code
        except outlast.ConfigurationError as exc:
            result.update(exit=EXIT_USAGE, error=type(exc).__name__)
            return _fail(str(exc), EXIT_USAGE)
        except MigrationTimeout as exc:
            result.update(exit=EXIT_TIMEOUT, error="timeout", reason=exc.reason)
            if exc.holder is not None:
                result["holder"] = exc.holder.as_dict()
            return _fail(str(exc), EXIT_TIMEOUT)
        except MigrationFailed as exc:
            result.update(exit=EXIT_FAILED, error="failed", reason=exc.reason)
            return _fail(str(exc), EXIT_FAILED)
        result.update(
            exit=EXIT_OK,
            outcome=status.outcome,
            applied=list(status.applied),
            leader=status.leader,
            state=status.state.describe() if status.state else None,
            waited=round(status.waited, 3),
            ready_at=status.ready_at,
        )
        return EXIT_OK
    finally:
        result["elapsed"] = round(time.time() - started, 3)
        if args.json:
            print(json.dumps(result), flush=True)
        logging.getLogger("outlast").removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - python -m entry
    """``python -m outlast.migrate._cli ...`` (the ``outlast migrate`` command)."""
    parser = argparse.ArgumentParser(prog="outlast migrate")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
