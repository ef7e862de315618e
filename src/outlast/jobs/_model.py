"""The values of the queue: a job to enqueue, a claimed job, a handler's settings."""

from __future__ import annotations

import datetime
import json
import math
import os
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from outlast import Backoff, ConfigurationError

__all__ = ["Cancelled", "Handler", "Job", "NewJob", "as_seconds", "enqueue_params"]

Seconds = float | datetime.timedelta


def as_seconds(value: Seconds, what: str, *, allow_zero: bool = False) -> float:
    """Seconds from a number or a timedelta; `ConfigurationError` for anything else."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{what} must be seconds (a number or a timedelta), got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value == float("inf"):
        raise ConfigurationError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


class Cancelled(Exception):
    """Raise from a handler to end a job whose cancellation was requested (``job.cancelled``)."""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job for `Jobs.enqueue_many`; the fields mean what `Jobs.enqueue`'s options mean."""

    kind: str
    payload: Any = None
    key: str | int | None = None
    run_at: datetime.datetime | Seconds | None = None
    priority: int = 0
    dedupe: str | None = None
    max_attempts: int | None = None


def enqueue_params(job: NewJob, default_attempts: int) -> list[Any]:
    """The eight positional parameters of one row of `enqueue_sql`, validated."""
    if not isinstance(job.kind, str) or not job.kind:
        raise ConfigurationError(f"kind must be a non-empty string, got {job.kind!r}")
    try:
        payload = json.dumps({} if job.payload is None else job.payload)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"payload of a {job.kind!r} job is not JSON: {exc}") from None
    if job.key is not None and (isinstance(job.key, bool) or not isinstance(job.key, str | int)):
        raise ConfigurationError(f"key must be a string or an integer, got {job.key!r}")
    if isinstance(job.priority, bool) or not isinstance(job.priority, int):
        raise ConfigurationError(f"priority must be an integer, got {job.priority!r}")
    if job.dedupe is not None and not isinstance(job.dedupe, str):
        raise ConfigurationError(f"dedupe must be a string, got {job.dedupe!r}")
    attempts = default_attempts if job.max_attempts is None else job.max_attempts
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ConfigurationError(f"max_attempts must be an integer >= 1, got {attempts!r}")
    run_at: datetime.datetime | None = None
    delay: float | None = None
    if isinstance(job.run_at, datetime.datetime):
        if job.run_at.tzinfo is None:
            raise ConfigurationError("run_at must be an aware datetime (with a tzinfo)")
        run_at = job.run_at
    elif job.run_at is not None:
        delay = as_seconds(job.run_at, "run_at (a delay)", allow_zero=True)
    key = None if job.key is None else str(job.key)
    return [job.kind, key, payload, job.priority, run_at, delay, attempts, job.dedupe]


@dataclass(eq=False)
class Job:
    """A claimed job, as its handler receives it.

    `attempt` counts from 1; `slot` is the numbered per-key slot the attempt
    holds (None when its kind has no limit or it has no key); `reclaimed` is
    True when this attempt took over the job from a worker whose lease expired.
    """

    id: int
    kind: str
    key: str | None
    payload: Any
    attempt: int
    max_attempts: int
    slot: int | None
    priority: int
    created_at: datetime.datetime
    reclaimed: bool = False
    previous_worker: str | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cancelled(self) -> bool:
        """True once `Jobs.cancel` was called for this job (seen at the next heartbeat)."""
        return self._cancel.is_set()


HandlerFn = Callable[[Job], Any] | Callable[[Job], Awaitable[Any]]


@dataclass(frozen=True)
class Handler:
    """A registered handler and its retry settings."""

    kind: str
    fn: HandlerFn
    is_async: bool
    retry_backoff: Backoff
    max_attempts: int | None = None


def check_limits(limits: Mapping[str, int] | None) -> dict[str, int]:
    """Validate ``limits={"kind": n}`` (n >= 1 concurrent jobs per key)."""
    out: dict[str, int] = {}
    for kind, n in (limits or {}).items():
        if not isinstance(kind, str) or not kind:
            raise ConfigurationError(f"limits keys must be job kinds (strings), got {kind!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"limits[{kind!r}] must be an integer >= 1, got {n!r}")
        out[kind] = n
    return out


def worker_id() -> str:
    """``host:pid:random``: names the holder of a lease in rows and logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
