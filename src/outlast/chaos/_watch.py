"""Message positions on one link: the ``cut_at`` fault's counts, and recordings.

Pure bookkeeping, no I/O. The link hands over, in order, the whole messages
its boundary trackers captured in one chunk (with the SQL each client message
runs, if any) and learns where, if anywhere, a ``cut_at`` fault strikes in
that chunk. The same walk appends each message to the link's recording.

``cut_at`` counts the messages of one direction on one link: from the first
message after the fault reached the link (for a new connection: the first
after its StartupMessage), or, with ``after``, from the first client message
whose SQL matches (that message is number 0 upstream; downstream, counting
starts with the server's next message). ``skip`` messages go through; the
next one is where the link dies: just before it (``forward=False``) or just
after it (``forward=True``).

A recording lists every message of a link the way the proxy saw them, both
directions interleaved in arrival order, so a test can replay one fault per
position: record one clean run, then strike at each message in turn.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from outlast.chaos._faults import FaultSpec

__all__ = ["MessageWatch", "Strike"]

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"


@dataclass(frozen=True, slots=True)
class Strike:
    """Where a ``cut_at`` fault strikes in a chunk.

    `at`: the chunk's bytes before this offset are delivered, the rest is not.
    `boundary`: `at` lies between two whole messages (an ErrorResponse may
    follow it); False when the struck message began in an earlier chunk.
    `index`: the struck message's place among the chunk's messages.
    """

    spec: FaultSpec
    at: int
    boundary: bool
    index: int

    @property
    def how(self) -> str:
        return str(self.spec.params["how"])


class _Position:
    __slots__ = ("down", "started", "up")

    def __init__(self, started: bool) -> None:
        self.started = started
        self.up = 0  # client messages counted so far
        self.down = 0  # server messages counted so far


class MessageWatch:
    """One link's ``cut_at`` positions and, while recording, its message log."""

    __slots__ = ("_positions", "record")

    def __init__(self) -> None:
        self._positions: dict[str, _Position] = {}
        self.record: list[dict[str, Any]] | None = None

    @staticmethod
    def captures(faults: Iterable[FaultSpec], recording: bool) -> tuple[bool, bool]:
        """Whether whole client and server messages are needed: ``(upstream, downstream)``."""
        up = down = recording
        for spec in faults:
            if spec.kind == "cut_at":
                up = True  # the anchor (``after``) is a client message
                down = down or spec.params["direction"] == DOWNSTREAM
        return up, down

    def forget(self, fault_id: str) -> None:
        self._positions.pop(fault_id, None)

    def _position(self, spec: FaultSpec) -> _Position:
        position = self._positions.get(spec.id)
        if position is None:
            position = self._positions[spec.id] = _Position(spec.params["after"] is None)
        return position

    def upstream(
        self,
        messages: list[tuple[bytes, int]],
        texts: list[str | None],
        faults: Mapping[str, FaultSpec],
        fire: Callable[[FaultSpec], bool],
    ) -> Strike | None:
        """Walk the client messages of a chunk; the strike of the first ``cut_at`` due."""
        cuts = [f for f in faults.values() if f.kind == "cut_at"]
        for index, ((message, end), text) in enumerate(zip(messages, texts, strict=True)):
            if self.record is not None:
                self.record.append(_entry(UPSTREAM, message, text))
            for spec in cuts:
                position = self._position(spec)
                if not position.started:
                    after = spec.params["after"]
                    if text is None or not re.search(after, text, re.IGNORECASE):
                        continue
                    position.started = True
                if spec.params["direction"] != UPSTREAM:
                    continue
                due = position.up == spec.params["skip"]
                position.up += 1
                if due and fire(spec):
                    return _strike(spec, message, end, index)
        return None

    def downstream(
        self,
        messages: list[tuple[bytes, int]],
        faults: Mapping[str, FaultSpec],
        fire: Callable[[FaultSpec], bool],
    ) -> Strike | None:
        """Walk the server messages of a chunk; the strike of the first ``cut_at`` due."""
        cuts = [
            f for f in faults.values() if f.kind == "cut_at" and f.params["direction"] == DOWNSTREAM
        ]
        for index, (message, end) in enumerate(messages):
            if self.record is not None:
                self.record.append(_entry(DOWNSTREAM, message, None))
            for spec in cuts:
                position = self._position(spec)
                if not position.started:
                    continue
                due = position.down == spec.params["skip"]
                position.down += 1
                if due and fire(spec):
                    return _strike(spec, message, end, index)
        return None


def _strike(spec: FaultSpec, message: bytes, end: int, index: int) -> Strike:
    if spec.params["forward"]:
        return Strike(spec, end, True, index)
    start = end - len(message)
    return Strike(spec, max(start, 0), start >= 0, index)


def _entry(direction: str, message: bytes, text: str | None) -> dict[str, Any]:
    kind = message[:1]
    entry: dict[str, Any] = {
        "direction": direction,
        "type": kind.decode("ascii", "replace"),
        "length": len(message) - 1,
    }
    if text is None and direction == UPSTREAM and kind == b"P":
        parts = message[5:].split(b"\x00", 2)  # statement name, query, parameter types
        if len(parts) > 1:
            text = parts[1].decode("utf-8", "replace")
    if text is not None:
        entry["sql"] = text
    return entry
