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


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Runner,
    *,
    help: str,
    description: str,
) -> argparse.ArgumentParser:
    """Add the sub-parser ``outlast <name>`` that runs `run(args)`; returns it for its options."""
    parser = sub.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run)
    return parser


def lazy_subcommand(name: str, module: str, run: str, *, help: str, description: str) -> None:
    """Register ``outlast <name>`` without importing `module` until it is used.

    `module`'s ``add_arguments(parser)`` adds its options (when the parser is
    built), and ``<module>.<run>(args) -> int`` runs it.
    """
    import importlib

    def _run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), run)(args)
        return result

    @subcommand
    def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = add_command(sub, name, _run, help=help, description=description)
        importlib.import_module(module).add_arguments(parser)


def fail(command: str, message: str, code: int = 2) -> int:
    """Print ``outlast <command>: <message>`` to stderr and return the exit `code`."""
    print(f"outlast {command}: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    """The ``outlast`` argument parser with every registered subcommand."""
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
    "outlast._cli_jobs",
]


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
