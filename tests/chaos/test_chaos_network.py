"""Network faults observed by plain sockets through a proxy in front of an echo server."""

from __future__ import annotations

import asyncio
import errno
import socket
import statistics
import threading
import time

import pytest
from chaos_kit import EchoServer, connect, open_fds, recv_exact, roundtrip, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outlast.chaos import Proxy


@pytest.fixture
def echo() -> object:
    with EchoServer() as server:
        yield server


@pytest.fixture(params=["asyncio", "uvloop"])
def proxy(echo: EchoServer, request: pytest.FixtureRequest) -> object:
    with Proxy(upstream=echo.address, loop=request.param) as p:
        yield p


def test_forwards_both_ways_and_counts(proxy: Proxy) -> None:
    assert roundtrip(proxy.port, b"x" * 100_000) == b"x" * 100_000
    wait_until(lambda: proxy.stats()["connections"] == 0, what="link closed")
    stats = proxy.stats()
    assert stats["total_connections"] == 1
    assert stats["bytes_up"] == stats["bytes_down"] == 100_000
    assert stats["listen"] == f"127.0.0.1:{proxy.port}"


def test_many_proxies_per_process_and_ephemeral_ports(echo: EchoServer) -> None:
    with Proxy(upstream=echo.address) as a, Proxy(upstream=echo.address) as b:
        assert a.port != b.port and a.port > 0
        assert a.address == ("127.0.0.1", a.port)
        assert roundtrip(a.port) == roundtrip(b.port) == b"hello"
        with a.fault("down"):
            assert roundtrip(b.port) == b"hello"


async def test_async_context_manager(echo: EchoServer) -> None:
    async with Proxy(upstream=echo.address) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        writer.close()
        await writer.wait_closed()
    assert not p.running


def test_down_refuses_new_drops_live_and_comes_back_on_the_same_port(proxy: Proxy) -> None:
    live = connect(proxy.port)
    live.sendall(b"a")
    assert recv_exact(live, 1) == b"a"
    port = proxy.port
    with proxy.fault("down"):
        with pytest.raises(ConnectionRefusedError):
            connect(port, timeout=5)
        assert live.recv(10) == b""  # dropped
        assert proxy.stats()["listening"] is False
    live.close()
    assert proxy.port == port
    assert roundtrip(port) == b"hello"


def test_down_with_duration_ends_by_itself(proxy: Proxy) -> None:
    proxy.add_fault("down", duration=0.3)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy.port, timeout=5)
    wait_until(lambda: proxy.faults() == [], what="fault expired")
    assert roundtrip(proxy.port) == b"hello"


def test_reset_sends_rst_to_new_and_live_connections(proxy: Proxy) -> None:
    with connect(proxy.port) as live:
        live.sendall(b"a")
        assert recv_exact(live, 1) == b"a"
        with proxy.fault("reset"):
            with pytest.raises(ConnectionResetError):
                live.recv(10)
            # the RST may even beat connect() back to the client
            with pytest.raises(ConnectionResetError), connect(proxy.port) as s:
                s.sendall(b"x")
                s.recv(10)


def test_blackhole_accepts_and_never_answers(proxy: Proxy, echo: EchoServer) -> None:
    before = echo.connections
    with proxy.fault("blackhole"):
        s = connect(proxy.port, timeout=0.5)
        s.sendall(b"anyone?")
        with pytest.raises(socket.timeout):
            s.recv(10)
        assert echo.connections == before  # never reached the upstream
    # lifting the blackhole closes the connections it swallowed data from
    s.settimeout(10)
    assert s.recv(10) == b""
    s.close()


def test_freeze_holds_live_connections_and_resumes(proxy: Proxy) -> None:
    s = connect(proxy.port)
    s.sendall(b"1")
    assert recv_exact(s, 1) == b"1"
    fid = proxy.add_fault("freeze")
    s.settimeout(0.5)
    s.sendall(b"2")
    with pytest.raises(socket.timeout):
        s.recv(10)
    fresh = connect(proxy.port, timeout=0.5)
    fresh.sendall(b"3")
    with pytest.raises(socket.timeout):
        fresh.recv(10)
    proxy.remove_fault(fid)
    s.settimeout(10)
    fresh.settimeout(10)
    assert recv_exact(s, 1) == b"2"  # nothing lost
    assert recv_exact(fresh, 1) == b"3"
    s.close()
    fresh.close()


@pytest.mark.parametrize(
    ("direction", "up", "down"), [("upstream", 1, 0), ("downstream", 0, 1), ("both", 1, 1)]
)
def test_latency_per_direction(
    proxy: Proxy, echo: EchoServer, direction: str, up: int, down: int
) -> None:
    delay = 0.15
    with connect(proxy.port) as s:
        s.sendall(b"w")
        assert recv_exact(s, 1) == b"w"
        with proxy.fault("latency", ms=150, direction=direction):
            for _ in range(3):
                started = time.monotonic()
                s.sendall(b"a")
                assert recv_exact(s, 1) == b"a"
                total = time.monotonic() - started
                reached = echo.received_at - started  # when the server had the byte
                assert up * delay * 0.95 <= reached < up * delay + 0.1, reached
                assert (up + down) * delay * 0.95 <= total < (up + down) * delay + 0.15, total
        started = time.monotonic()
        s.sendall(b"b")
        assert recv_exact(s, 1) == b"b"
        assert time.monotonic() - started < 0.05  # the fault is gone


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize(("direction", "delayed"), [("upstream", 0), ("downstream", 1)])
def test_upstream_latency_does_not_delay_a_server_push(
    loop: str, direction: str, delayed: int
) -> None:
    with EchoServer(greeting=b"hi") as greeter, Proxy(upstream=greeter.address, loop=loop) as p:
        with p.fault("latency", ms=200, direction=direction):
            started = time.monotonic()
            with connect(p.port) as s:
                assert recv_exact(s, 2) == b"hi"  # sent by the server unasked
            elapsed = time.monotonic() - started
    assert delayed * 0.19 <= elapsed < delayed * 0.2 + 0.1, elapsed


def test_latency_jitter_spreads_round_trips(proxy: Proxy) -> None:
    times: list[float] = []
    with (
        connect(proxy.port) as s,
        proxy.fault("latency", ms=60, jitter_ms=50, direction="upstream"),
    ):
        for _ in range(20):
            started = time.monotonic()
            s.sendall(b"j")
            assert recv_exact(s, 1) == b"j"
            times.append(time.monotonic() - started)
    # Uniform in 10-110 ms: every value inside, spread out, centred near 60 ms.
    assert all(0.0095 <= t < 0.11 + 0.1 for t in times), times
    assert max(times) - min(times) > 0.04, times
    assert 0.04 <= statistics.mean(times) < 0.09, times


def test_latency_with_jitter_keeps_order(proxy: Proxy) -> None:
    with proxy.fault("latency", ms=20, jitter_ms=20), connect(proxy.port) as s:
        payload = b"".join(bytes([i]) for i in range(200))
        for i in range(200):
            s.sendall(bytes([i]))
        assert recv_exact(s, 200) == payload


@pytest.mark.parametrize(
    ("direction", "up", "down"),
    [("upstream", True, False), ("downstream", False, True), ("both", True, True)],
)
def test_bandwidth_per_direction(
    proxy: Proxy, echo: EchoServer, direction: str, up: bool, down: bool
) -> None:
    with connect(proxy.port) as s:
        s.sendall(b"w")
        assert recv_exact(s, 1) == b"w"
        with proxy.fault("bandwidth", kbps=100, direction=direction):
            started = time.monotonic()
            s.sendall(b"z" * 50_000)  # 50 kB at 100 kB/s: 0.5 s in a throttled direction
            assert recv_exact(s, 50_000) == b"z" * 50_000
            total = time.monotonic() - started
            reached = echo.received_at - started  # when the server had all of it
    if up:
        assert 0.45 <= reached < 0.9, reached
    else:
        assert reached < 0.15, reached
    if down:
        assert 0.45 <= total < (1.4 if up else 0.9), total
    else:
        assert total - reached < 0.15, (total, reached)


def test_limit_data_closes_after_n_bytes(proxy: Proxy) -> None:
    with proxy.fault("limit_data", bytes=10), connect(proxy.port) as s:
        s.sendall(b"0123456789abcdef")
        assert recv_exact(s, 100) == b"0123456789"


def test_slow_close_delays_the_close(proxy: Proxy, echo: EchoServer) -> None:
    with proxy.fault("slow_close", delay_ms=400):
        s = connect(proxy.port)
        s.sendall(b"x")
        assert recv_exact(s, 1) == b"x"
        wait_until(lambda: proxy.stats()["connections"] == 1)
        t = time.monotonic()
        s.close()
        wait_until(lambda: proxy.stats()["connections"] == 0)
        assert time.monotonic() - t >= 0.35


def test_toxicity_zero_spares_everyone(proxy: Proxy) -> None:
    with proxy.fault("reset", toxicity=0.0):
        assert roundtrip(proxy.port) == b"hello"


def test_toxicity_half_hits_some(proxy: Proxy) -> None:
    hits = 0
    with proxy.fault("reset", toxicity=0.5):
        for _ in range(40):
            try:
                ok = roundtrip(proxy.port, timeout=5) == b"hello"
            except OSError:
                ok = False
            hits += not ok
    assert 0 < hits < 40


def test_faults_listing_and_removal(proxy: Proxy) -> None:
    a = proxy.add_fault("latency", ms=1)
    b = proxy.add_fault("reject_login", preset="too_many_connections", duration=60)
    listed = proxy.faults()
    assert [f["id"] for f in listed] == [a, b]
    assert listed[1]["params"]["sqlstate"] == "53300" and listed[1]["duration"] == 60
    proxy.remove_fault(a)
    with pytest.raises(KeyError):
        proxy.remove_fault(a)
    proxy.clear()
    assert proxy.faults() == []


def test_not_running_and_double_start(echo: EchoServer) -> None:
    p = Proxy(upstream=echo.address)
    with pytest.raises(RuntimeError):
        p.add_fault("down")
    with pytest.raises(RuntimeError):
        _ = p.port
    with p:
        with pytest.raises(RuntimeError):
            p.start()
    p.stop()  # idempotent


def test_port_in_use_is_an_oserror() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            Proxy(listen=("127.0.0.1", port), upstream=("127.0.0.1", 1)).start()
        assert info.value.errno == errno.EADDRINUSE


def test_unreachable_upstream_resets_the_client() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = free.getsockname()[1]
    with Proxy(upstream=("127.0.0.1", dead)) as p:
        with pytest.raises((ConnectionResetError, BrokenPipeError)), connect(p.port) as s:
            s.sendall(b"x")
            if s.recv(10) == b"":
                raise ConnectionResetError
    assert p.running is False


def test_vanishing_clients_leak_nothing(echo: EchoServer) -> None:
    baseline = open_fds()
    with Proxy(upstream=echo.address) as p:
        with p.fault("latency", ms=50):
            for _ in range(30):
                s = connect(p.port)
                s.sendall(b"y" * 70_000)
                s.close()  # gone mid-stream, with data still in flight
        for _ in range(30):
            s = connect(p.port)
            s.sendall(b"y" * 70_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()  # gone with an RST
        wait_until(lambda: p.stats()["connections"] == 0, what="all links closed")
        assert roundtrip(p.port) == b"hello"
    wait_until(lambda: open_fds() <= baseline, what=f"fds back to {baseline}")


def test_two_thousand_concurrent_connections(echo: EchoServer) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        pytest.skip("cannot raise the fd limit")
    baseline = open_fds()
    n = 2000
    with Proxy(upstream=echo.address) as p:

        async def one(i: int, ready: asyncio.Event, opened: list[int]) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
            opened.append(i)
            await ready.wait()
            payload = f"conn-{i}".encode()
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
            writer.close()
            await writer.wait_closed()
            return got

        async def main() -> list[bytes]:
            ready = asyncio.Event()
            opened: list[int] = []
            tasks = [asyncio.create_task(one(i, ready, opened)) for i in range(n)]
            while len(opened) < n:
                await asyncio.sleep(0.05)
            # accepted by the kernel first, by the proxy a moment later
            await asyncio.to_thread(
                wait_until, lambda: p.stats()["connections"] == n, 60, "all accepted"
            )
            ready.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

        results = asyncio.run(main())
        assert results == [f"conn-{i}".encode() for i in range(n)]
        wait_until(lambda: p.stats()["connections"] == 0, timeout=60, what="all closed")
        assert p.stats()["total_connections"] == n
    wait_until(lambda: open_fds() <= baseline, timeout=30, what="fds back")


def test_thread_safety_of_the_api(proxy: Proxy) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                fid = proxy.add_fault("latency", ms=0)
                proxy.stats()
                proxy.remove_fault(fid)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and proxy.faults() == []


@given(st.binary(max_size=600), st.booleans())
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_garbage_from_clients_never_hurts_the_proxy(
    garbage_proxy: Proxy, garbage: bytes, rejecting: bool
) -> None:
    fid = garbage_proxy.add_fault("reject_login", preset="starting_up") if rejecting else None
    try:
        with connect(garbage_proxy.port) as s:
            try:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(5)
                while s.recv(65536):
                    pass
            except OSError:
                pass
    finally:
        if fid is not None:
            garbage_proxy.remove_fault(fid)
    assert roundtrip(garbage_proxy.port) == b"hello"


@pytest.fixture(scope="module")
def garbage_proxy() -> object:
    with EchoServer() as server, Proxy(upstream=server.address) as p:
        baseline = open_fds()
        yield p
        wait_until(lambda: p.stats()["connections"] == 0, what="links closed")
        assert open_fds() <= baseline + 2


def test_clients_vanishing_mid_startup_under_reject_login(proxy: Proxy) -> None:
    import struct

    with proxy.fault("reject_login", preset="too_many_connections"):
        for cut in (0, 3, 8, 12):
            packet = struct.pack("!ii", 8, 80877103) + struct.pack("!ii", 30, 196608) + b"user"
            with connect(proxy.port) as s:
                s.sendall(packet[:cut])
        wait_until(lambda: proxy.stats()["connections"] == 0, what="abandoned logins closed")
