"""The asyncio protocol objects of a link's two sockets, and socket helpers.

`ClientSide.data_received` and `UpstreamSide.data_received` are the proxy's
hot path: with no fault on the link they count the bytes, let the boundary
tracker skim the message headers, and write the chunk to the other transport.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol, cast

from outlast.chaos._protocol import MessageTracker


class Link(Protocol):
    """What the two sockets' protocol objects need of their link (`_link.Link`).

    A protocol, not an import: the link builds its sides, so the sides must
    not import the link back.
    """

    bytes_up: int
    bytes_down: int
    fast_up: bool
    fast_down: bool
    tracker_up: MessageTracker | None
    tracker_down: MessageTracker | None
    client: asyncio.Transport | None
    upstream: asyncio.Transport | None

    def client_made(self, transport: asyncio.Transport) -> None: ...

    def client_data(self, data: bytes) -> None: ...

    def server_data(self, data: bytes) -> None: ...

    def side_closed(self, direction: int) -> None: ...

    def pause(self, direction: int, reason: str) -> None: ...

    def resume(self, direction: int, reason: str) -> None: ...


__all__ = ["C2S", "S2C", "ClientSide", "UpstreamSide", "abort_with_rst", "nodelay"]

C2S = 0  # client -> server ("upstream")
S2C = 1  # server -> client ("downstream")
_LINGER_RST = struct.pack("ii", 1, 0)


def abort_with_rst(transport: asyncio.Transport | None) -> None:
    """Close `transport` with a TCP RST instead of a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    transport.abort()


class _Side(asyncio.Protocol):
    """The protocol object of one socket of a link."""

    __slots__ = ("link", "transport")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None


class ClientSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.link.client_made(self.transport)

    def data_received(self, data: bytes) -> None:
        link = self.link
        link.bytes_up += len(data)
        if link.fast_up:
            tracker = link.tracker_up
            if tracker is not None:
                tracker.skim(data)
            link.upstream.write(data)  # type: ignore[union-attr]
        else:
            link.client_data(data)

    def eof_received(self) -> bool:
        self.link.side_closed(C2S)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.side_closed(C2S)

    def pause_writing(self) -> None:
        self.link.pause(S2C, "flow")

    def resume_writing(self) -> None:
        self.link.resume(S2C, "flow")


class UpstreamSide(_Side):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        link = self.link
        link.bytes_down += len(data)
        if link.fast_down:
            tracker = link.tracker_down
            if tracker is not None:
                tracker.skim(data)
            link.client.write(data)  # type: ignore[union-attr]
        else:
            link.server_data(data)

    def eof_received(self) -> bool:
        self.link.side_closed(S2C)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.side_closed(S2C)

    def pause_writing(self) -> None:
        self.link.pause(C2S, "flow")

    def resume_writing(self) -> None:
        self.link.resume(C2S, "flow")


def nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
