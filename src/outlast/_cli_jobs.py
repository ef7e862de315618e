"""Registers ``outlast worker`` and ``outlast jobs`` (heavy imports happen only when they run)."""

from __future__ import annotations

import argparse

from .cli import add_command, subcommand


def _lazy(name: str, run: str, add: str, *, help: str, description: str) -> None:
    import importlib

    module = "outlast.jobs._cli"

    def _run(args: argparse.Namespace) -> int:
        result: int = getattr(importlib.import_module(module), run)(args)
        return result

    @subcommand
    def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = add_command(sub, name, _run, help=help, description=description)
        getattr(importlib.import_module(module), add)(parser)


_lazy(
    "worker",
    "run_worker",
    "add_worker_arguments",
    help="run the handlers of an outlast.jobs queue",
    description="Run a durable job worker: claims jobs (per-key limits enforced in the "
    "claim), heartbeats their leases, rides out database outages, and on SIGTERM finishes "
    "or releases running jobs. Example: outlast worker app.tasks:jobs --concurrency 8",
)
_lazy(
    "jobs",
    "run_status",
    "add_status_arguments",
    help="show a job queue: depth per kind, oldest job, slots per key, dead letters",
    description="Read-only snapshot of an outlast.jobs queue.",
)
