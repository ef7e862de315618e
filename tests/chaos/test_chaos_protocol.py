"""Unit tests for the wire-protocol pieces and fault validation (pure logic)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outlast.chaos import FAULT_KINDS, LOGIN_PRESETS, Proxy
from outlast.chaos._faults import make_spec
from outlast.chaos._protocol import (
    SSL_REQUEST_CODE,
    MessageTracker,
    ProtocolViolation,
    StartupPacket,
    error_response,
    parse_error_response,
    parse_startup_packet,
    query_text,
)


def startup(**params: str) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!ii", 8 + len(body), 196608) + body


def msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def test_startup_message_is_parsed() -> None:
    data = startup(user="alice", database="shop")
    packet = parse_startup_packet(data + b"extra")
    assert packet == StartupPacket(
        "startup", 196608, len(data), {"user": "alice", "database": "shop"}
    )


def test_ssl_and_gssenc_requests_and_partial_input() -> None:
    ssl = struct.pack("!ii", 8, SSL_REQUEST_CODE)
    assert parse_startup_packet(ssl).kind == "ssl"  # type: ignore[union-attr]
    assert parse_startup_packet(struct.pack("!ii", 8, 80877104)).kind == "gssenc"  # type: ignore[union-attr]
    for cut in range(len(ssl)):
        assert parse_startup_packet(ssl[:cut]) is None
    full = startup(user="u")
    for cut in range(len(full)):
        assert parse_startup_packet(full[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!ii", 4, 196608),  # too short
        struct.pack("!ii", 20000, 196608),  # too long
        struct.pack("!ii", 12, SSL_REQUEST_CODE) + b"abcd",  # SSLRequest of the wrong size
        struct.pack("!ii", 9, 2 << 16) + b"\0",  # protocol 2
        struct.pack("!ii", 12, 196608) + b"ab\0\0",  # key without value
        struct.pack("!ii", 11, 196608) + b"abc",  # not terminated
        b"\x16\x03\x01\x02\x00\x01\x00\x01",  # a TLS ClientHello
    ],
)
def test_invalid_startup_packets_are_rejected(data: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_startup_packet(data)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_startup_parser_never_crashes_on_garbage(data: bytes) -> None:
    try:
        packet = parse_startup_packet(data)
    except ProtocolViolation:
        return
    if packet is not None:
        assert 8 <= packet.length <= len(data)


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=10).filter(lambda s: "\0" not in s),
        st.text(max_size=20).filter(lambda s: "\0" not in s),
        max_size=5,
    ),
    st.integers(min_value=0, max_value=60),
)
@settings(max_examples=200, deadline=None)
def test_startup_parser_roundtrips_and_handles_truncation(params: dict[str, str], cut: int) -> None:
    data = startup(**params)
    assert parse_startup_packet(data).parameters == params  # type: ignore[union-attr]
    if cut < len(data):
        assert parse_startup_packet(data[:cut]) is None


def test_error_response_is_well_formed() -> None:
    data = error_response("FATAL", "57P03", "the database system is starting up", hint="wait")
    assert data[:1] == b"E"
    assert struct.unpack("!I", data[1:5])[0] == len(data) - 1
    fields = parse_error_response(data)
    assert fields == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "57P03",
        "M": "the database system is starting up",
        "H": "wait",
    }


def test_message_tracker_follows_boundaries_across_any_split() -> None:
    stream = msg(b"Q", b"SELECT 1\0") + msg(b"S", b"") + msg(b"P", b"s1\0COMMIT\0\0\0")
    for cut in range(len(stream) + 1):
        tracker = MessageTracker()
        tracker.set_capture(True)
        got = [m for m, _ in tracker.feed(stream[:cut])] + [
            m for m, _ in tracker.feed(stream[cut:])
        ]
        assert got == [stream[:14], stream[14:19], stream[19:]]
        assert tracker.at_boundary


@given(st.lists(st.binary(max_size=40), max_size=8), st.lists(st.integers(0, 400), max_size=6))
@settings(max_examples=300, deadline=None)
def test_message_tracker_matches_a_reference_split(bodies: list[bytes], cuts: list[int]) -> None:
    messages = [msg(b"D", body) for body in bodies]
    stream = b"".join(messages)
    tracker = MessageTracker()
    tracker.set_capture(True)
    got: list[bytes] = []
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        got += [m for m, _ in tracker.feed(stream[a:b])]
    assert got == messages
    assert tracker.at_boundary


@given(
    st.lists(st.tuples(st.sampled_from(b"DTCZE"), st.binary(max_size=30)), max_size=10),
    st.lists(st.integers(0, 400), max_size=8),
    st.binary(max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_skim_keeps_the_same_state_as_feed(
    messages: list[tuple[int, bytes]], cuts: list[int], garbage: bytes
) -> None:
    stream = b"".join(msg(bytes([tag]), body) for tag, body in messages) + garbage
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    skimmer, feeder = MessageTracker(), MessageTracker()
    for a, b in itertools.pairwise(points):
        skimmer.skim(stream[a:b])
        assert feeder.feed(stream[a:b]) == []
        assert (skimmer.at_boundary, skimmer.broken) == (feeder.at_boundary, feeder.broken)
    tail = msg(b"Z", b"I")
    assert skimmer.feed_to_boundary(tail) == feeder.feed_to_boundary(tail)
    # and capturing afterwards sees the same messages
    skimmer.set_capture(True)
    feeder.set_capture(True)
    assert skimmer.feed(tail + tail) == feeder.feed(tail + tail)


def test_feed_to_boundary_finds_the_end_of_the_current_message() -> None:
    tracker = MessageTracker()
    first = msg(b"D", b"x" * 10)
    tracker.feed(first[:7])
    assert not tracker.at_boundary
    rest = first[7:] + msg(b"C", b"SELECT 1\0")
    assert tracker.feed_to_boundary(rest) == len(first) - 7
    assert tracker.at_boundary


def test_message_tracker_gives_up_on_a_broken_stream() -> None:
    tracker = MessageTracker()
    tracker.feed(b"Q\x00\x00\x00\x01")
    assert tracker.broken and not tracker.at_boundary


def test_query_text_follows_parse_bind_execute() -> None:
    statements: dict[bytes, bytes] = {}
    portals: dict[bytes, bytes] = {}
    assert query_text(msg(b"Q", b"COMMIT\0"), statements, portals) == "COMMIT"
    assert query_text(msg(b"P", b"s1\0COMMIT\0\0\0"), statements, portals) is None
    assert query_text(msg(b"B", b"p1\0s1\0\0\0\0\0\0\0"), statements, portals) is None
    assert query_text(msg(b"E", b"p1\0\0\0\0\0"), statements, portals) == "COMMIT"
    assert query_text(msg(b"E", b"nope\0\0\0\0\0"), statements, portals) == ""


@pytest.mark.parametrize(
    ("kind", "params", "needle"),
    [
        ("latncy", {}, "unknown fault"),
        ("latency", {}, "ms"),
        ("latency", {"ms": -1}, "ms"),
        ("latency", {"ms": 5, "jitter": 1}, "jitter"),
        ("latency", {"ms": 5, "direction": "sideways"}, "direction"),
        ("bandwidth", {"kbps": 0}, "kbps"),
        ("limit_data", {"bytes": 1.5}, "bytes"),
        ("reject_login", {"preset": "nope"}, "preset"),
        ("reject_login", {"sqlstate": "123"}, "sqlstate"),
        ("reject_login", {"severity": "WARNING"}, "severity"),
        ("cut_after", {"pattern": "("}, "pattern"),
        ("cut_after", {}, "pattern"),
        ("down", {"ms": 1}, "ms"),
    ],
)
def test_fault_validation_names_the_bad_option(
    kind: str, params: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        make_spec("x", kind, params=params)


def test_toxicity_and_duration_are_validated_before_the_proxy_runs() -> None:
    with pytest.raises(ValueError, match="toxicity"):
        make_spec("x", "down", toxicity=2)
    with pytest.raises(ValueError, match="duration"):
        make_spec("x", "down", duration=float("nan"))
    # even on a proxy that is not running, a bad option is a ValueError, not RuntimeError
    with pytest.raises(ValueError, match="jitter_ms"):
        Proxy(upstream=("127.0.0.1", 1)).add_fault("latency", ms=1, jitter_ms="a")


def test_presets_and_kinds() -> None:
    assert LOGIN_PRESETS["neon_endpoint_disabled"].code == "XX000"
    assert LOGIN_PRESETS["neon_endpoint_disabled"].severity == "ERROR"
    assert "Neon API" in LOGIN_PRESETS["neon_endpoint_disabled_api"].message
    spec = make_spec("x", "reject_login", params={"preset": "too_many_connections"})
    assert (spec.login_error.code, spec.login_error.severity) == ("53300", "FATAL")
    custom = make_spec("x", "reject_login", params={"message": "nope", "sqlstate": "28000"})
    assert custom.login_error.message == "nope" and custom.login_error.code == "28000"
    assert set(FAULT_KINDS) >= {"down", "reset", "blackhole", "freeze", "latency", "terminate"}
