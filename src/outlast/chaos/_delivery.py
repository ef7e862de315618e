"""Delivering a link's bytes through delays, bandwidth limits, data limits and holds.

`Delivery` is the part of `Link` that the ``latency``, ``bandwidth``,
``limit_data`` and ``freeze`` faults go through: per direction, a queue of
``(due time, bytes)`` drained by one timer, and read pauses keyed by reason
(``hold``, ``queue``, ``flow``, ``pending``) so that each cause resumes only
what it paused.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque

from outlast.chaos._faults import FaultSpec
from outlast.chaos._sides import C2S, S2C

__all__ = ["DIR_NAMES", "Delivery"]

DIR_NAMES = {"upstream": (C2S,), "downstream": (S2C,), "both": (C2S, S2C)}
_QUEUE_HIGH = 1 << 20
_QUEUE_LOW = 1 << 18


class Delivery:
    """Mixin of `Link`: the attributes below are its slots."""

    __slots__ = ()
    loop: asyncio.AbstractEventLoop
    client: asyncio.Transport | None
    upstream: asyncio.Transport | None
    closed: bool
    faults: dict[str, FaultSpec]
    _queues: tuple[deque[tuple[float, bytes]], deque[tuple[float, bytes]]]
    _queued: list[int]
    _last_due: list[float]
    _timers: list[asyncio.TimerHandle | None]
    _sent: list[int]
    _close_after_drain: bool
    _paused: tuple[set[str], set[str]]

    def close(self, *, rst: bool = False) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        raise NotImplementedError

    def _of(self, kind: str) -> list[FaultSpec]:
        return [f for f in self.faults.values() if f.kind == kind]

    def _other(self, direction: int) -> asyncio.Transport | None:
        return self.upstream if direction == C2S else self.client

    def _send(self, direction: int, data: bytes) -> None:
        """Forward `data`, through delays and limits when faults ask for them."""
        if not data:
            return
        limits = [
            f for f in self._of("limit_data") if direction in DIR_NAMES[f.params["direction"]]
        ]
        over = False
        if limits:
            self._sent[direction] += len(data)
            total = (
                sum(self._sent)
                if limits[0].params["direction"] == "both"
                else self._sent[direction]
            )
            allowed = min(f.params["bytes"] for f in limits)
            if total >= allowed:
                data = data[: max(0, len(data) - (total - allowed))]
                over = True
        delay = self._delay(direction, len(data))
        if delay is None and not self._queues[direction]:
            target = self._other(direction)
            if target is not None and data:
                target.write(data)
        elif data:
            now = self.loop.time()
            due = max(now + (delay or 0.0), self._last_due[direction])
            due = self._throttle(direction, due, len(data))
            self._last_due[direction] = due
            self._queues[direction].append((due, data))
            self._queued[direction] += len(data)
            if self._queued[direction] > _QUEUE_HIGH:
                self.pause(direction, "queue")
            if self._timers[direction] is None:
                self._schedule(direction)
        if over:
            if self._queues[direction]:
                self._close_after_drain = True  # type: ignore[misc]  # a slot of Link
            else:
                self.close()

    def _delay(self, direction: int, size: int) -> float | None:
        total: float | None = None
        for spec in self.faults.values():
            if spec.kind == "latency" and direction in DIR_NAMES[spec.params["direction"]]:
                jitter = spec.params["jitter_ms"]
                ms = spec.params["ms"] + (random.uniform(-jitter, jitter) if jitter else 0.0)
                total = (total or 0.0) + max(0.0, ms) / 1000.0
            elif spec.kind == "bandwidth" and direction in DIR_NAMES[spec.params["direction"]]:
                total = total or 0.0
        return total

    def _throttle(self, direction: int, due: float, size: int) -> float:
        rates: list[float] = [
            f.params["kbps"] * 1000.0
            for f in self._of("bandwidth")
            if direction in DIR_NAMES[f.params["direction"]]
        ]
        if not rates:
            return due
        return due + size / min(rates)

    def _schedule(self, direction: int) -> None:
        due = self._queues[direction][0][0]
        self._timers[direction] = self.loop.call_at(due, self._deliver, direction)

    def _deliver(self, direction: int) -> None:
        self._timers[direction] = None
        if self.closed or "hold" in self._paused[direction]:
            return
        queue = self._queues[direction]
        now = self.loop.time()
        target = self._other(direction)
        while queue and queue[0][0] <= now:
            _, data = queue.popleft()
            self._queued[direction] -= len(data)
            if target is not None:
                target.write(data)
        if self._queued[direction] < _QUEUE_LOW:
            self.resume(direction, "queue")
        if queue:
            self._schedule(direction)
        elif self._close_after_drain and not self._queues[1 - direction]:
            self.close()
        else:
            self.refresh()

    def pause(self, direction: int, reason: str) -> None:
        """Stop reading from the source of `direction` (C2S: the client)."""
        reasons = self._paused[direction]
        source = self.client if direction == C2S else self.upstream
        if not reasons and source is not None and not source.is_closing():
            source.pause_reading()
        reasons.add(reason)

    def resume(self, direction: int, reason: str) -> None:
        reasons = self._paused[direction]
        if reason not in reasons:
            return
        reasons.discard(reason)
        source = self.client if direction == C2S else self.upstream
        if not reasons and source is not None and not source.is_closing():
            source.resume_reading()
