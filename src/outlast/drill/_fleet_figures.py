"""The fleet drill's figures: what each second and each outage looked like.

Pure functions over what the fleet drill recorded (no I/O, no clocks), so the
arithmetic is tested on its own. Times are seconds on the drill's clock
(`outlast.drill._fleet` turns the proxy's and the server's epoch timestamps
into it).

- `Recording`: the raw observations of one fleet (one side of the drill).
- `per_second`: one `Second` per second of the run: login attempts, server
  connections, 53300 rejections (the server's own, and the proxy's injected
  ones apart), answers by status.
- `outage`: one `Outage` per scenario: the peak login rate, the rejections,
  the 503s, and how long after the database returned the first and the last
  worker answered their first 200.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "Outage", "Recording", "Second", "outage", "per_second"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One request to one worker: when it started and ended, and its status (None: no answer)."""

    worker: int
    start: float
    end: float
    status: int | None


@dataclass
class Recording:
    """What one fleet did, as the drill saw it.

    `connects`: (time, total connections the proxy accepted so far), sampled;
    `logins`: (time, SQLSTATE the proxy's ``reject_login`` answered, or None)
    for every StartupMessage; `server`: (time, the fleet's sessions in
    ``pg_stat_activity``), sampled; `server_rejections`: when the server
    itself refused one of the fleet's logins with 53300.
    """

    workers: int
    answers: list[Answer] = field(default_factory=list)
    connects: list[tuple[float, int]] = field(default_factory=list)
    logins: list[tuple[float, str | None]] = field(default_factory=list)
    server: list[tuple[float, int]] = field(default_factory=list)
    server_rejections: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Second:
    """One second of one fleet (``at`` is the second's start on the drill's clock)."""

    at: int
    attempts: int
    """New connections the proxy accepted: each is one login attempt of a worker."""
    logins: int
    """StartupMessages the proxy read (a connection refused upstream may never send one)."""
    injected_53300: int
    """Logins the proxy rejected with 53300 (the ``too_many_connections`` scenario)."""
    server_53300: int
    """Logins the server itself refused with 53300: the fleet went over max_connections."""
    server_connections: int | None
    """The most sessions of the fleet the server held at once (None: not sampled)."""
    ok: int
    unavailable: int
    """503 answers."""
    errors: int
    """Other 5xx answers, and requests that got no answer at all."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "attempts": self.attempts,
            "logins": self.logins,
            "injected_53300": self.injected_53300,
            "server_53300": self.server_53300,
            "server_connections": self.server_connections,
            "ok": self.ok,
            "503": self.unavailable,
            "errors": self.errors,
        }


def _bucket(t: float, length: int) -> int | None:
    i = math.floor(t)
    return i if 0 <= i < length else None


def per_second(rec: Recording, length: float) -> list[Second]:
    """`rec` binned into whole seconds, from 0 to `length`."""
    n = max(0, math.ceil(length))
    attempts = [0] * n
    # A sample says how many connections were accepted up to then: the
    # difference from the sample before falls in the second of the sample.
    previous: int | None = None
    for t, total in sorted(rec.connects):
        if previous is not None and (i := _bucket(t, n)) is not None:
            attempts[i] += max(0, total - previous)
        previous = total
    logins = [0] * n
    injected = [0] * n
    for t, rejected in rec.logins:
        if (i := _bucket(t, n)) is not None:
            logins[i] += 1
            injected[i] += rejected == "53300"
    refused = [0] * n
    for t in rec.server_rejections:
        if (i := _bucket(t, n)) is not None:
            refused[i] += 1
    held: list[int | None] = [None] * n
    for t, count in rec.server:
        if (i := _bucket(t, n)) is not None:
            held[i] = max(held[i] or 0, count)
    ok = [0] * n
    unavailable = [0] * n
    errors = [0] * n
    for a in rec.answers:
        if (i := _bucket(a.end, n)) is None:
            continue
        if a.status is not None and a.status < 400:
            ok[i] += 1
        elif a.status == 503:
            unavailable[i] += 1
        elif a.status is None or a.status >= 500:
            errors[i] += 1
    return [
        Second(
            i,
            attempts[i],
            logins[i],
            injected[i],
            refused[i],
            held[i],
            ok[i],
            unavailable[i],
            errors[i],
        )
        for i in range(n)
    ]


@dataclass(frozen=True, slots=True)
class Outage:
    """One scenario of one fleet, from its fault's start to the end of its observation.

    `returned`: when the database came back (the last fault removed, or the
    restarted server accepting again). `first_200` / `last_200`: seconds from
    then to the first worker's, and to the last worker's, first 200;
    `last_200` is None when `silent` workers never answered 200 in time.
    """

    scenario: str
    start: float
    returned: float
    end: float
    peak_attempts: int
    attempts: int
    injected_53300: int
    server_53300: int
    peak_server_connections: int | None
    unavailable: int
    errors: int
    first_200: float | None
    last_200: float | None
    silent: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "start": round(self.start, 3),
            "returned": round(self.returned, 3),
            "end": round(self.end, 3),
            "peak_attempts_per_s": self.peak_attempts,
            "attempts": self.attempts,
            "injected_53300": self.injected_53300,
            "server_53300": self.server_53300,
            "peak_server_connections": self.peak_server_connections,
            "503": self.unavailable,
            "errors": self.errors,
            "first_200": None if self.first_200 is None else round(self.first_200, 3),
            "last_200": None if self.last_200 is None else round(self.last_200, 3),
            "workers_not_serving": self.silent,
        }


def outage(
    scenario: str,
    rec: Recording,
    seconds: Sequence[Second],
    *,
    start: float,
    returned: float,
    end: float,
) -> Outage:
    """The figures of one scenario: the fault began at `start`, the database
    returned at `returned`, and the fleet was watched until `end`."""
    lo, hi = math.floor(start), math.ceil(end)
    window = [s for s in seconds if lo <= s.at < hi]
    first: dict[int, float] = {}
    for a in rec.answers:
        if a.status == 200 and returned <= a.end <= end:
            took = a.end - returned
            if took < first.get(a.worker, math.inf):
                first[a.worker] = took
    silent = rec.workers - len(first)
    held = [s.server_connections for s in window if s.server_connections is not None]
    return Outage(
        scenario=scenario,
        start=start,
        returned=returned,
        end=end,
        peak_attempts=max((s.attempts for s in window), default=0),
        attempts=sum(s.attempts for s in window),
        injected_53300=sum(s.injected_53300 for s in window),
        server_53300=sum(1 for t in rec.server_rejections if start <= t < end),
        peak_server_connections=max(held) if held else None,
        unavailable=sum(1 for a in rec.answers if a.status == 503 and start <= a.end < end),
        errors=sum(
            1
            for a in rec.answers
            if (a.status is None or (a.status >= 500 and a.status != 503)) and start <= a.end < end
        ),
        first_200=min(first.values()) if first else None,
        last_200=max(first.values()) if first and silent == 0 else None,
        silent=silent,
    )
