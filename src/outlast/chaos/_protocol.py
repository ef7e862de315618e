"""The few pieces of the PostgreSQL wire protocol (v3) that the proxy needs.

Nothing here does I/O. The proxy feeds bytes in and gets decisions out:

- `parse_startup_packet` reads the untyped first packet of a session
  (StartupMessage, SSLRequest, GSSENCRequest or CancelRequest);
- `error_response` builds a well-formed ``ErrorResponse`` ('E') message;
- `MessageTracker` follows message boundaries in one direction of a live
  session cheaply (it reads 5-byte headers and skips bodies) and, when asked,
  hands back whole messages so a fault can look at them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_LENGTH",
    "PROTOCOL_V3",
    "SSL_REQUEST_CODE",
    "MessageTracker",
    "ProtocolViolation",
    "StartupPacket",
    "error_response",
    "parse_error_response",
    "parse_startup_packet",
    "query_text",
]

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
PROTOCOL_V3 = 3 << 16
# The server refuses startup packets above this size (src/include/libpq/pqcomm.h).
MAX_STARTUP_LENGTH = 10000
# A typed message longer than this is treated as a broken stream, not buffered.
MAX_MESSAGE_LENGTH = 1 << 30

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!cI")
_UINT32 = struct.Struct("!I")


class ProtocolViolation(ValueError):
    """The bytes are not a valid PostgreSQL message."""


@dataclass(frozen=True)
class StartupPacket:
    """The first packet of a session.

    ``kind`` is ``"startup"``, ``"ssl"``, ``"gssenc"`` or ``"cancel"``;
    ``parameters`` holds the StartupMessage's key/value pairs (user, database, ...).
    """

    kind: str
    code: int
    length: int
    parameters: dict[str, str] = field(default_factory=dict)


def parse_startup_packet(buffer: bytes | bytearray) -> StartupPacket | None:
    """Parse the untyped packet at the start of `buffer`.

    Returns None when more bytes are needed and raises `ProtocolViolation` for
    bytes that can never become a valid packet. ``packet.length`` says how many
    bytes of `buffer` the packet used.
    """
    if len(buffer) < 8:
        if len(buffer) >= 4:
            _check_length(_INT32.unpack_from(buffer, 0)[0])
        return None
    length, code = struct.unpack_from("!ii", buffer, 0)
    _check_length(length)
    if len(buffer) < length:
        return None
    body = bytes(buffer[8:length])
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if length != 8:
            raise ProtocolViolation(f"encryption request of length {length}, expected 8")
        return StartupPacket("ssl" if code == SSL_REQUEST_CODE else "gssenc", code, length)
    if code == CANCEL_REQUEST_CODE:
        # 16 bytes in protocol 3.0, up to 264 with the longer keys of protocol 3.2.
        if length < 12:
            raise ProtocolViolation(f"cancel request of length {length}")
        return StartupPacket("cancel", code, length)
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    return StartupPacket("startup", code, length, _parameters(body))


def _check_length(length: int) -> None:
    if length < 8 or length > MAX_STARTUP_LENGTH:
        raise ProtocolViolation(f"invalid startup packet length {length}")


def _parameters(body: bytes) -> dict[str, str]:
    if body == b"\x00":
        return {}
    if not body.endswith(b"\x00\x00"):
        raise ProtocolViolation("startup packet is not NUL-terminated")
    items = body[:-2].split(b"\x00")
    if len(items) % 2:
        raise ProtocolViolation("startup packet has a key without a value")
    params: dict[str, str] = {}
    for key, value in zip(items[::2], items[1::2], strict=True):
        if not key:
            raise ProtocolViolation("startup packet has an empty parameter name")
        params[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return params


def _cstring(text: str) -> bytes:
    return text.encode("utf-8").replace(b"\x00", b"") + b"\x00"


def error_response(
    severity: str,
    code: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ``ErrorResponse`` message with the S, V, C and M fields (and D, H if given)."""
    fields = [(b"S", severity), (b"V", severity), (b"C", code), (b"M", message)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    body = b"".join(tag + _cstring(value) for tag, value in fields) + b"\x00"
    return b"E" + _INT32.pack(len(body) + 4) + body


def parse_error_response(message: bytes) -> dict[str, str]:
    """The fields of a whole ``ErrorResponse``/``NoticeResponse`` message, by tag."""
    if len(message) < 5 or message[:1] not in (b"E", b"N"):
        raise ProtocolViolation("not an ErrorResponse")
    length = _INT32.unpack_from(message, 1)[0]
    if length + 1 != len(message) or not message.endswith(b"\x00"):
        raise ProtocolViolation("truncated ErrorResponse")
    fields: dict[str, str] = {}
    for part in message[5:-1].split(b"\x00"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def query_text(
    message: bytes, statements: dict[bytes, bytes], portals: dict[bytes, bytes]
) -> str | None:
    """The SQL a whole client message runs, if any.

    ``Q`` carries its text; ``P`` (Parse) names a statement; ``B`` (Bind) maps a
    portal to a statement; ``E`` (Execute) runs a portal. `statements` and
    `portals` are updated in place so an Execute can be traced back to its text.
    Returns the text for Q and E messages, None otherwise.
    """
    tag = message[:1]
    body = message[5:]
    try:
        if tag == b"Q":
            return body.split(b"\x00", 1)[0].decode("utf-8", "replace")
        if tag == b"P":
            name, rest = body.split(b"\x00", 1)
            statements[name] = rest.split(b"\x00", 1)[0]
            return None
        if tag == b"B":
            portal, rest = body.split(b"\x00", 1)
            portals[portal] = statements.get(rest.split(b"\x00", 1)[0], b"")
            return None
        if tag == b"E":
            portal = body.split(b"\x00", 1)[0]
            return portals.get(portal, b"").decode("utf-8", "replace")
    except ValueError:
        return None
    return None


class MessageTracker:
    """Follows the boundaries of typed messages in one direction of a session.

    `feed` returns nothing and keeps only a few integers unless `capture` is on,
    in which case it also returns the whole messages completed by this chunk
    together with the offset in the chunk where each one ends. `at_boundary`
    says whether the bytes seen so far end exactly between two messages.
    """

    __slots__ = ("_body", "_capture", "_header", "_need", "broken")

    def __init__(self) -> None:
        self._need = 0  # body bytes still to come for the current message
        self._header = b""  # a partial 5-byte header
        self._body: bytearray | None = None  # the current message, when capturing
        self._capture = False
        self.broken = False  # the stream stopped looking like the protocol

    @property
    def at_boundary(self) -> bool:
        return not self.broken and self._need == 0 and not self._header

    @property
    def capturing(self) -> bool:
        return self._capture

    def set_capture(self, on: bool) -> None:
        """Start or stop collecting whole messages (starts at the next message)."""
        self._capture = on
        if not on:
            self._body = None

    def feed_to_boundary(self, data: bytes) -> int | None:
        """Consume `data` up to the end of the current message.

        Returns the offset of the first message boundary in `data` (0 when the
        stream is already between messages), or None when `data` ends first, in
        which case all of it was consumed. Nothing is captured.
        """
        if self.broken:
            return None
        if self.at_boundary:
            return 0
        pos = 0
        n = len(data)
        if self._header:
            missing = 5 - len(self._header)
            self._header += data[:missing]
            pos = min(missing, n)
            if len(self._header) < 5:
                return None
            length = _HEADER.unpack(self._header)[1]
            self._header = b""
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                self.broken = True
                return None
            self._need = length - 4
        take = min(self._need, n - pos)
        self._need -= take
        self._body = None
        pos += take
        return None if self._need else pos

    def skim(self, data: bytes) -> None:
        """`feed` for the proxy's hot path: the same accounting, nothing returned.

        One length read per message and no slicing: a whole-messages chunk (the
        usual case) costs a few hundred nanoseconds.
        """
        if self._capture or self._header or self.broken:
            self.feed(data)
            return
        n = len(data)
        pos = self._need
        if pos >= n:
            self._need = pos - n
            return
        unpack = _UINT32.unpack_from
        last = n - 5
        while pos <= last:
            length = unpack(data, pos + 1)[0]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                self.broken = True
                self._need = 0
                return
            pos += 1 + length
        if pos < n:  # a header cut by the end of the chunk
            self._header = bytes(data[pos:])
            self._need = 0
        else:
            self._need = pos - n

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        """Account for `data`; return ``(message, end_offset)`` pairs when capturing."""
        if self.broken:
            return []
        out: list[tuple[bytes, int]] = []
        pos = 0
        n = len(data)
        need = self._need
        while True:
            if need:
                take = min(need, n - pos)
                if self._body is not None:
                    self._body += data[pos : pos + take]
                pos += take
                need -= take
                if need:
                    break
                if self._body is not None:
                    out.append((bytes(self._body), pos))
                    self._body = None
            if pos >= n:
                break
            if self._header or n - pos < 5:
                missing = 5 - len(self._header)
                self._header += data[pos : pos + missing]
                pos += min(missing, n - pos)
                if len(self._header) < 5:
                    break
                header = self._header
                self._header = b""
            else:
                header = data[pos : pos + 5]
                pos += 5
            length = _HEADER.unpack(header)[1]
            if length < 4 or length > MAX_MESSAGE_LENGTH:
                self.broken = True
                self._need = 0
                return out
            need = length - 4
            if self._capture:
                self._body = bytearray(header)
                if not need:
                    out.append((bytes(self._body), pos))
                    self._body = None
        self._need = need
        return out
