"""One proxied connection: a client transport, an upstream transport, its faults.

The fast path (no fault on the link) hands each chunk from one transport's
``data_received`` straight to the other transport's ``write``; flow control
pauses the reading side while the writing side's buffer is full. Everything
else (startup, delays, holds, cuts, terminate) goes through the slow path.

Boundary tracking: unless the proxy was built with ``track=False``, each
direction keeps a `MessageTracker` that reads only the 5-byte message headers,
so a ``terminate`` can slip an ErrorResponse in between whole server messages
and ``cut_after`` can find a client's COMMIT. ``cut_at`` and recordings have
the trackers hand over whole messages, in both directions, to the link's
`MessageWatch`. The untyped startup packets are parsed either way, to record
the login's parameters (`login`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import Any, Protocol

from outlast.chaos._delivery import Delivery
from outlast.chaos._faults import TERMINATE_ERROR, FaultSpec
from outlast.chaos._logins import login_parameters
from outlast.chaos._protocol import (
    MessageTracker,
    ProtocolViolation,
    error_response,
    parse_startup_packet,
    query_text,
)
from outlast.chaos._sides import C2S, S2C, UpstreamSide, abort_with_rst, nodelay
from outlast.chaos._watch import MessageWatch, Strike


class Proxy(Protocol):
    """What a link needs of its proxy (`_proxy.Proxy`, which builds the links).

    A protocol, not an import, so the proxy and its links do not import each other.
    """

    loop: asyncio.AbstractEventLoop
    upstream: tuple[str, int]
    connect_timeout: float

    def link_opened(self, link: Link) -> None: ...

    def link_closed(self, link: Link) -> None: ...

    def login_seen(self, link: Link, parameters: dict[str, str], rejected: str | None) -> None: ...

    def cut_fired(self, spec: FaultSpec) -> bool: ...

    def fault_hit(self, spec: FaultSpec) -> None: ...


__all__ = ["Link"]

_CUT_REPLY_TIMEOUT = 30.0


class Link(Delivery):
    """A client connection and its upstream connection, with the faults applied to it."""

    # Slots: the hot path reads and writes a few of these on every chunk.
    __slots__ = (
        "_close_after_drain",
        "_connecting",
        "_cut",
        "_cut_timer",
        "_dropped",
        "_expect_reply_byte",
        "_in_startup",
        "_last_due",
        "_paused",
        "_pending",
        "_portals",
        "_queued",
        "_queues",
        "_sent",
        "_severed",
        "_slow_closing",
        "_startup",
        "_statements",
        "_terminate_pending",
        "_timers",
        "bytes_down",
        "bytes_up",
        "client",
        "closed",
        "fast_down",
        "fast_up",
        "faults",
        "id",
        "login",
        "loop",
        "proxy",
        "rejecting",
        "tracker_down",
        "tracker_up",
        "upstream",
        "watch",
    )

    def __init__(self, proxy: Proxy, link_id: int, *, track: bool) -> None:
        self.proxy = proxy
        self.id = link_id
        self.loop = proxy.loop
        self.client: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.closed = False
        self.fast_up = False
        self.fast_down = False
        self.faults: dict[str, FaultSpec] = {}
        self.rejecting: FaultSpec | None = None
        self.login: dict[str, str] | None = None  # the StartupMessage's parameters
        self._connecting = False
        self._pending: list[bytes] = []  # client bytes before the upstream is ready
        self._paused: tuple[set[str], set[str]] = (set(), set())  # read pauses per source
        self._queues: tuple[deque[tuple[float, bytes]], deque[tuple[float, bytes]]] = (
            deque(),
            deque(),
        )
        self._queued = [0, 0]
        self._last_due = [0.0, 0.0]
        self._timers: list[asyncio.TimerHandle | None] = [None, None]
        self._sent = [0, 0]  # bytes counted for limit_data since attached
        self._close_after_drain = False
        self._slow_closing = False
        self._startup = bytearray()  # untyped startup packets, until the StartupMessage
        self._expect_reply_byte = False
        self.tracker_up: MessageTracker | None = MessageTracker() if track else None
        self.tracker_down: MessageTracker | None = MessageTracker() if track else None
        self._in_startup = True
        self._statements: dict[bytes, bytes] = {}
        self._portals: dict[bytes, bytes] = {}
        self._terminate_pending = False
        self._cut: FaultSpec | None = None  # set once a cut_after fired
        self._cut_timer: asyncio.TimerHandle | None = None
        self._dropped = False  # blackholed at some point: close when lifted
        self._severed = False  # struck by cut_at: nothing more goes either way
        self.watch = MessageWatch()

    # ----------------------------------------------------------- lifecycle

    def client_made(self, transport: asyncio.Transport) -> None:
        self.client = transport
        nodelay(transport)
        self.proxy.link_opened(self)

    def start_upstream(self) -> None:
        if self._connecting or self.closed or self.rejecting is not None:
            return
        self._connecting = True
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        host, port = self.proxy.upstream
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: UpstreamSide(self), host, port),
                self.proxy.connect_timeout,
            )
        except (TimeoutError, OSError):
            abort_with_rst(self.client)
            self.close()
            return
        if self.closed:
            transport.abort()
            return
        self.upstream = transport
        nodelay(transport)
        if self._paused[S2C]:
            transport.pause_reading()
        self.refresh()

    def side_closed(self, direction: int) -> None:
        """The client (C2S) or the server (S2C) closed its socket."""
        if self.closed or self._slow_closing:
            return
        delay = max((f.params["delay_ms"] for f in self._of("slow_close")), default=0.0)
        if delay:
            self._slow_closing = True
            self.loop.call_later(delay / 1000.0, self.close)
        elif self._queues[direction] and self._other(direction) is not None:
            self._close_after_drain = True  # deliver what is delayed, then close
        else:
            self.close()

    def close(self, *, rst: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.fast_up = self.fast_down = False
        for i, timer in enumerate(self._timers):
            if timer is not None:
                timer.cancel()
                self._timers[i] = None
        if self._cut_timer is not None:
            self._cut_timer.cancel()
        if rst:
            abort_with_rst(self.client)
        elif self.client is not None:
            self.client.close()
        if self.upstream is not None:
            self.upstream.close()
        self._queues[0].clear()
        self._queues[1].clear()
        self.proxy.link_closed(self)

    # ----------------------------------------------------------- faults

    def attach(self, spec: FaultSpec) -> None:
        self.faults[spec.id] = spec
        if spec.kind == "blackhole":
            self._dropped = True
        if spec.kind in ("limit_data",):
            self._sent = [0, 0]
        self.refresh()

    def detach(self, fault_id: str) -> None:
        spec = self.faults.pop(fault_id, None)
        self.watch.forget(fault_id)
        if spec is None or self.closed:
            return
        if spec.kind == "blackhole" and not self._of("blackhole"):
            self.close()  # its data went nowhere: the stream cannot continue
            return
        self.refresh()

    def refresh(self) -> None:
        """Recompute the fast-path flags and holds after a change."""
        if self.closed:
            return
        held = bool(self._of("freeze"))
        for direction in (C2S, S2C):
            if held:
                self.pause(direction, "hold")
            else:
                self.resume(direction, "hold")
                if self._queues[direction] and self._timers[direction] is None:
                    self._schedule(direction)
        up, down = MessageWatch.captures(self.faults.values(), self.watch.record is not None)
        if self._cut is None and self.tracker_up is not None:
            self.tracker_up.set_capture(up or bool(self._of("cut_after")))
        if self._cut is None and not self._terminate_pending and self.tracker_down is not None:
            self.tracker_down.set_capture(down)
        simple = (
            not self.faults
            and self._cut is None
            and self.rejecting is None
            and self.watch.record is None
        )
        ready = self.upstream is not None and not self._in_startup
        self.fast_up = simple and ready and not self._queues[C2S]
        self.fast_down = simple and ready and not self._queues[S2C] and not self._terminate_pending
        if self.upstream is None and not held and not self._of("blackhole"):
            self.start_upstream()
        elif self._pending and self.upstream is not None and not held:
            self._flush_pending()

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, []
        self.resume(C2S, "pending")
        for chunk in pending:
            self.client_data(chunk)

    def terminate(self) -> None:
        """Send FATAL 57P01 between two server messages, then close."""
        tracker = self.tracker_down
        if self.rejecting is not None or self.upstream is None or self._in_startup:
            self.close()
        elif tracker is not None and tracker.at_boundary:
            self._finish_with_error()
        elif tracker is None or tracker.broken:
            self.close()
        else:
            self._terminate_pending = True
            self.refresh()

    def _finish_with_error(self) -> None:
        e = TERMINATE_ERROR
        self._send(S2C, error_response(e.severity, e.code, e.message))
        if self.upstream is not None:
            self.upstream.close()
        self.fast_up = self.fast_down = False
        if self._queues[S2C]:
            self._close_after_drain = True
        else:
            self.close()

    # ----------------------------------------------------------- slow path

    def client_data(self, data: bytes) -> None:
        if self.closed or self._severed:
            return
        if self.rejecting is not None:
            self._reject_feed(data)
            return
        if self._of("blackhole"):
            return
        if self.upstream is None or self._paused[C2S] & {"hold"}:
            self._pending.append(data)
            self.pause(C2S, "pending")
            return
        if self._in_startup:
            self._track_startup(data)
        else:
            tracker = self.tracker_up
            if tracker is not None:
                found = None
                if self._cut is None:
                    messages = tracker.feed(data)
                    texts = [query_text(m, self._statements, self._portals) for m, _ in messages]
                    strike = self.watch.upstream(messages, texts, self.faults, self.proxy.cut_fired)
                    if strike is not None:
                        # A cut_after on an earlier message of this chunk goes first.
                        found = self._find_cut(messages[: strike.index], texts)
                        if found is None:
                            self._strike(C2S, data, strike)
                            return
                    else:
                        found = self._find_cut(messages, texts)
                if found is not None and not found[0].params["forward"]:
                    # The server must never see the message: forward what came
                    # before it and close both sides (an open transaction rolls
                    # back; a message begun in an earlier chunk stays unfinished).
                    _spec, end, length = found
                    self._send(C2S, data[: max(0, end - length)])
                    self.close()
                    return
                self._send(C2S, data)
                if found is not None:
                    self._start_cut(found[0])
                return
        self._send(C2S, data)

    def server_data(self, data: bytes) -> None:
        if self.closed or self._severed or self._of("blackhole"):
            return
        if self._expect_reply_byte and data:
            self._expect_reply_byte = False
            if data[:1] != b"N":
                # TLS or GSS encryption ('S'/'G') or an error: stop following the protocol.
                self._untrack()
            else:
                self._send(S2C, data[:1])
                data = data[1:]
        tracker = self.tracker_down
        if self._cut is not None:
            if tracker is not None:
                for message, _ in tracker.feed(data):
                    if message[:1] == b"Z":
                        self.close()
                        return
            return  # the client must never see the reply
        if self._terminate_pending and tracker is not None:
            end = tracker.feed_to_boundary(data)
            if end is not None:
                self._send(S2C, data[:end])
                self._terminate_pending = False
                self._finish_with_error()
                return
            if tracker.broken:
                self.close()
                return
        elif tracker is not None:
            if tracker.capturing:
                messages = tracker.feed(data)
                strike = self.watch.downstream(messages, self.faults, self.proxy.cut_fired)
                if strike is not None:
                    self._strike(S2C, data, strike)
                    return
            else:
                tracker.skim(data)
        self._send(S2C, data)

    def _strike(self, direction: int, data: bytes, strike: Strike) -> None:
        """``cut_at``: deliver the chunk up to the strike, then end the link as asked.

        ``close``: a FIN to the client (after what was already handed on);
        ``reset``: an RST; ``terminate``: FATAL 57P01 first, when the server's
        stream is between two messages there (else a FIN). The server always
        gets a FIN after the bytes forwarded to it, so it runs what it
        received and then sees its client gone.
        """
        self._severed = True
        self.fast_up = self.fast_down = False
        self._send(direction, data[: strike.at])
        if strike.how == "reset":
            self.close(rst=True)
            return
        if direction == S2C:
            boundary = strike.boundary
        else:
            boundary = self.tracker_down is not None and self.tracker_down.at_boundary
        if strike.how == "terminate" and boundary:
            self._finish_with_error()
            return
        if self.upstream is not None:
            self.upstream.close()
        if self._queues[S2C]:
            self._close_after_drain = True
        else:
            self.close()

    def _untrack(self) -> None:
        self.tracker_up = self.tracker_down = None
        self._in_startup = False
        self._startup.clear()
        self.refresh()

    def _track_startup(self, data: bytes) -> None:
        self._startup += data
        try:
            packet = parse_startup_packet(self._startup)
        except ProtocolViolation:
            self._untrack()
            return
        if packet is None:
            return
        rest = bytes(self._startup[packet.length :])
        self._startup.clear()
        if packet.kind in ("ssl", "gssenc"):
            self._expect_reply_byte = True
            if rest:
                self._untrack()  # bytes after an encryption request: direct TLS etc.
            return
        if packet.kind == "cancel":
            self._untrack()
            return
        self._logged_in(packet.parameters, None)
        self._in_startup = False
        if rest and self.tracker_up is not None:
            self.tracker_up.skim(rest)
        self.refresh()

    def _logged_in(self, parameters: dict[str, str], rejected: str | None) -> None:
        self.login = login_parameters(parameters)
        self.proxy.login_seen(self, self.login, rejected)

    def _find_cut(
        self, messages: list[tuple[bytes, int]], texts: list[str | None]
    ) -> tuple[FaultSpec, int, int] | None:
        """The cut_after that fires on one of `messages`, with that message's end and length."""
        cuts = self._of("cut_after")
        if not cuts:
            return None
        for (message, end), text in zip(messages, texts, strict=False):
            if text is None:
                continue
            for spec in cuts:
                matched = re.search(spec.params["pattern"], text, re.IGNORECASE)
                if matched and self.proxy.cut_fired(spec):
                    return spec, end, len(message)
        return None

    def _start_cut(self, spec: FaultSpec) -> None:
        self._cut = spec
        self.fast_up = self.fast_down = False
        if self.tracker_up is not None:
            self.tracker_up.set_capture(False)
        if self.tracker_down is not None:
            self.tracker_down.set_capture(True)
        if not spec.params["wait_reply"] and self.client is not None:
            self.client.close()
        self._cut_timer = self.loop.call_later(_CUT_REPLY_TIMEOUT, self.close)

    # ----------------------------------------------------------- reject_login

    def _reject_feed(self, data: bytes) -> None:
        assert self.rejecting is not None and self.client is not None
        self._startup += data
        while True:
            try:
                packet = parse_startup_packet(self._startup)
            except ProtocolViolation:
                self.close(rst=True)
                return
            if packet is None:
                return
            del self._startup[: packet.length]
            if packet.kind in ("ssl", "gssenc"):
                self.client.write(b"N")  # never an error in reply (CVE-2024-10977)
                continue
            if packet.kind == "startup":
                e = self.rejecting.login_error
                self.proxy.fault_hit(self.rejecting)
                self._logged_in(packet.parameters, e.code)
                self.client.write(
                    error_response(e.severity, e.code, e.message, detail=e.detail, hint=e.hint)
                )
            self.close()
            return

    def peer(self) -> str | None:
        peer = self.client.get_extra_info("peername") if self.client else None
        return f"{peer[0]}:{peer[1]}" if peer else None

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "client": self.peer(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "faults": sorted(self.faults),
            "login": None if self.login is None else dict(self.login),
        }
