"""The ``outlast`` command.

Each subcommand registers itself in `_SUBCOMMANDS` through a small function that
adds an argparse sub-parser; heavy imports happen only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._version import __version__

__all__ = ["main"]

Runner = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

_SUBCOMMANDS: list[Registrar] = []


def subcommand(fn: Registrar) -> Registrar:
    """Register a function that adds one sub-parser (with ``set_defaults(run=...)``)."""
    _SUBCOMMANDS.append(fn)
    return fn


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outlast",
        description="Keep PostgreSQL-backed Python services up while their database is not.",
    )
    parser.add_argument("--version", action="version", version=f"outlast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _load_subcommands()
    for register in _SUBCOMMANDS:
        register(sub)
    return parser


def _load_subcommands() -> None:
    # Importing these modules registers their sub-parsers; each keeps its
    # third-party imports inside its run function so `outlast --help` stays fast.
    import importlib

    for module in _SUBCOMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # pragma: no cover - optional modules
            if exc.name != module:
                raise


_SUBCOMMAND_MODULES: list[str] = [
    "outlast._cli_proxy",
    "outlast._cli_drill",
    "outlast._cli_demo",
    "outlast._cli_wait",
]


def main(argv: Sequence[str] | None = None) -> int:
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
