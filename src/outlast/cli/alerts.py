"""``outlast alerts``: print the alert rules that ship with outlast."""

from __future__ import annotations

import argparse
import sys

from outlast.cli import fail

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``outlast alerts``."""
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="Prometheus rule_files YAML (the only format so far; the default)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the rules to stdout (2 when prometheus-client is not installed)."""
    try:
        from outlast.prometheus import rules
    except ModuleNotFoundError as exc:
        return fail("alerts", f"needs {exc.name}: pip install 'outlast[prometheus]'")
    sys.stdout.write(rules())
    return 0
