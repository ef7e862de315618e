"""``outlast worker module:jobs`` and ``outlast jobs status``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from outlast import ConfigurationError, redact

__all__ = ["add_status_arguments", "add_worker_arguments", "run_status", "run_worker"]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="where the queue lives: 'package.module:jobs' (an outlast.jobs.Jobs)"
    )
    parser.add_argument("--concurrency", type=int, default=10, help="jobs at once (default 10)")
    parser.add_argument("--kinds", default=None, help="comma-separated kinds (default: all)")
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds a SIGTERM waits for running jobs before releasing them (default 30)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="outlast log level (default INFO: one line per job)"
    )


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"target must look like 'package.module:jobs', got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the app's own package is importable
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name} has no attribute {attr!r}") from None
    return obj


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``outlast <command>: <message>`` to stderr and return the exit `code`."""
    print(f"outlast {command}: {message}", file=sys.stderr)
    return code


def run_worker(args: argparse.Namespace) -> int:
    import signal

    from ._jobs import Jobs
    from ._worker import Worker

    # Until the worker installs its own handlers: a SIGTERM while the app is still
    # importing ends the process cleanly (it holds no job yet).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        logging.getLogger("outlast").setLevel(args.log_level.upper())
    except ValueError:
        return fail("worker", f"unknown log level {args.log_level!r}")
    try:
        obj = _load(args.target)
        if isinstance(obj, Worker):
            worker = obj
        elif isinstance(obj, Jobs):
            kinds = None if args.kinds is None else [k for k in args.kinds.split(",") if k]
            worker = obj.worker(
                concurrency=args.concurrency,
                kinds=kinds,
                shutdown_timeout=args.shutdown_timeout,
            )
        else:
            return fail(
                "worker", f"{args.target} is a {type(obj).__name__}, not an outlast.jobs.Jobs"
            )
    except ConfigurationError as exc:
        return fail("worker", redact(str(exc)))
    except ImportError as exc:
        return fail("worker", f"cannot import {args.target}: {exc}")
    worker.run(handle_signals=True)
    return 0


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["status"], help="what to show")
    parser.add_argument("--dsn", help="database (default: OUTLAST_DSN or DATABASE_URL)")
    parser.add_argument("--schema", default="outlast_jobs", help="the queue's schema")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--connect-timeout", type=float, default=5.0)


def run_status(args: argparse.Namespace) -> int:
    import psycopg

    from ._status import status

    dsn = args.dsn or os.environ.get("OUTLAST_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        return fail("jobs", "no DSN (use --dsn, OUTLAST_DSN or DATABASE_URL)")
    try:
        import outlast.psycopg

        with outlast.psycopg.connect(
            dsn, autocommit=True, connect_timeout=max(2, round(args.connect_timeout))
        ) as conn:
            snapshot = status(conn, schema=args.schema)
    except ConfigurationError as exc:
        return fail("jobs", redact(str(exc)))
    except psycopg.errors.UndefinedTable:
        return fail("jobs", f"no job queue in schema {args.schema!r} (no worker has run yet)", 1)
    except psycopg.Error as exc:
        return fail("jobs", f"database unavailable: {redact(str(exc).strip())}", 1)
    if args.json:
        print(json.dumps(snapshot.as_dict(), indent=2, default=str))
    else:
        print(snapshot.format())
    return 0
