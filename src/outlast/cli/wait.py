"""``outlast wait``: block until the database accepts sessions (for entrypoints).

Exit codes: 0 ready; 1 not ready before ``--timeout`` (the last reason is
printed); 2 a fault that waiting cannot fix (authentication failed, database
does not exist) or a malformed DSN. Messages never contain the password.
"""

from __future__ import annotations

import argparse
import os
import sys

from outlast.cli import fail

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``outlast wait``."""
    parser.add_argument(
        "--dsn",
        default=None,
        help="libpq DSN or URL (default: $OUTLAST_DSN, then $DATABASE_URL)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument(
        "--attempt-timeout", type=float, default=5.0, help="seconds per check (default 5)"
    )
    parser.add_argument(
        "--driver",
        default="auto",
        choices=["auto", "psycopg", "psycopg2", "asyncpg", "protocol"],
        help="how to check (default: psycopg, else psycopg2, else the wire protocol)",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the outcome")


def run(args: argparse.Namespace) -> int:
    """Wait for the database; exit code 0 ready, 1 timed out, 2 cannot succeed (see above)."""
    from outlast._core.connections.wait import WaitAttempt, wait_for_database
    from outlast._core.faults.errors import DatabaseNotReady
    from outlast._core.faults.fault import FaultKind

    dsn = args.dsn or os.environ.get("OUTLAST_DSN") or os.environ.get("DATABASE_URL")
    if not dsn:
        return fail("wait", "no DSN (use --dsn, OUTLAST_DSN or DATABASE_URL)")

    def progress(attempt: WaitAttempt) -> None:
        if not args.quiet:
            print(
                f"outlast wait: not ready ({attempt.fault.reason}), try {attempt.attempt},"
                f" retrying in {attempt.sleep:.1f}s",
                file=sys.stderr,
                flush=True,
            )

    try:
        waited = wait_for_database(
            dsn,
            timeout=args.timeout,
            attempt_timeout=args.attempt_timeout,
            driver=args.driver,
            on_attempt=progress,
        )
    except DatabaseNotReady as exc:
        permanent = exc.fault is not None and exc.fault.kind is FaultKind.PERMANENT
        return fail("wait", f"database not ready: {exc}", 2 if permanent else 1)
    except ValueError as exc:
        return fail("wait", str(exc))
    print(f"outlast wait: database ready after {waited:.1f}s")
    return 0
