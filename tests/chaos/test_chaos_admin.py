"""The admin HTTP API, through `AdminClient` and through raw (sometimes garbage) bytes."""

from __future__ import annotations

import json
import socket

import pytest
from chaos_kit import EchoServer, open_fds, roundtrip, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outlast.chaos import AdminClient, AdminError, AdminServer, Proxy


@pytest.fixture(scope="module")
def setup() -> object:
    with EchoServer() as echo, Proxy(upstream=echo.address, name="pg") as proxy:
        with AdminServer([proxy], ("127.0.0.1", 0)) as admin:
            yield echo, proxy, admin


@pytest.fixture
def admin(setup: tuple[EchoServer, Proxy, AdminServer]) -> AdminClient:
    setup[1].clear()
    yield setup[2].client()
    setup[1].clear()


@pytest.fixture
def proxy(setup: tuple[EchoServer, Proxy, AdminServer]) -> Proxy:
    return setup[1]


def raw(
    server: AdminServer, data: bytes, *, authorized: bool = True
) -> tuple[int, dict[str, object] | None]:
    """Send `data` as is; `authorized` adds what a legitimate client sends after
    the request line (Host, the token, a JSON Content-Type)."""
    if authorized and b" HTTP/1.1\r\n" in data:
        line, _, rest = data.partition(b" HTTP/1.1\r\n")
        auth = (
            f"Host: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {server.token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()
        data = line + b" HTTP/1.1\r\n" + auth + rest
    with socket.create_connection(server.address, timeout=15) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        response = b""
        while chunk := s.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    return status, json.loads(body) if body else None


def test_list_add_remove_reset(admin: AdminClient, proxy: Proxy) -> None:
    assert roundtrip(proxy.port) == b"hello"
    listing = admin.proxies()
    assert set(listing) == {"pg"}
    assert listing["pg"]["total_connections"] >= 1 and listing["pg"]["bytes_up"] >= 5
    fid = admin.add_fault("pg", "latency", ms=5, jitter_ms=1)
    assert [f["id"] for f in admin.faults("pg")] == [fid] == [f["id"] for f in proxy.faults()]
    admin.remove_fault("pg", fid)
    assert admin.faults("pg") == []
    admin.add_fault("pg", "down")
    admin.add_fault("pg", "freeze", duration=30)
    admin.reset()
    assert admin.faults("pg") == []
    assert roundtrip(proxy.port) == b"hello"  # back up after reset


def test_fault_context_manager_over_http(admin: AdminClient, proxy: Proxy) -> None:
    with admin.fault("pg", "down"):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    assert roundtrip(proxy.port) == b"hello"


def test_errors_are_json_4xx(admin: AdminClient) -> None:
    cases = [
        (lambda: admin.add_fault("pg", "explode"), 400, "unknown fault"),
        (lambda: admin.add_fault("pg", "latency", ms="slow"), 400, "ms must be a number"),
        (lambda: admin.add_fault("pg", "latency", ms=1, toxicity=3), 400, "toxicity"),
        (lambda: admin.add_fault("nope", "down"), 404, "no proxy"),
        (lambda: admin.remove_fault("pg", "down-999"), 404, "no active fault"),
        (lambda: admin.proxy("nope"), 404, "no proxy"),
    ]
    for call, status, text in cases:
        with pytest.raises(AdminError) as info:
            call()
        assert info.value.status == status and text in info.value.message


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 5\r\n\r\n{bad}", 400),
        (b"POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 2\r\n\r\n[]", 400),
        (b'POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 13\r\n\r\n{"type": "x"}', 400),
        (b'POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 12\r\n\r\n{"tipe": 1}\n', 400),
        (b"POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 99\r\n\r\n{}", 400),
        (b"POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413),
        (b"POST /proxies/pg/faults HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"PUT /proxies HTTP/1.1\r\n\r\n", 405),
        (b"GET /nowhere HTTP/1.1\r\n\r\n", 404),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n", 400),
    ],
)
def test_bad_requests_get_clear_errors(
    setup: tuple[EchoServer, Proxy, AdminServer], request_bytes: bytes, status: int
) -> None:
    got, body = raw(setup[2], request_bytes)
    assert got == status
    assert body is not None and body["status"] == status and body["error"]


@given(st.binary(max_size=2000))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_garbage_never_crashes_the_admin_api(
    setup: tuple[EchoServer, Proxy, AdminServer], garbage: bytes
) -> None:
    server = setup[2]
    with socket.create_connection(server.address, timeout=15) as s:
        try:
            s.sendall(garbage)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
    assert raw(server, b"GET /proxies HTTP/1.1\r\n\r\n")[0] == 200


@given(
    st.dictionaries(
        st.sampled_from(["type", "duration", "toxicity", "params", "junk"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=20),
            st.sampled_from(["down", "latency", "reject_login", "cut_after"]),
            st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=10))),
        ),
    )
)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_random_fault_requests_are_400_or_201(
    setup: tuple[EchoServer, Proxy, AdminServer], body: dict[str, object]
) -> None:
    server, proxy = setup[2], setup[1]
    payload = json.dumps(body).encode()
    status, answer = raw(
        server,
        b"POST /proxies/pg/faults HTTP/1.1\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload,
    )
    assert status in (201, 400), answer
    proxy.clear()


def test_create_and_delete_proxies(
    admin: AdminClient, setup: tuple[EchoServer, Proxy, AdminServer]
) -> None:
    echo = setup[0]
    created = admin.create_proxy("extra", "127.0.0.1:0", f"127.0.0.1:{echo.port}")
    port = int(created["listen"].rsplit(":", 1)[1])
    assert roundtrip(port) == b"hello"
    with pytest.raises(AdminError) as info:
        admin.create_proxy("extra", "127.0.0.1:0", "127.0.0.1:1")
    assert info.value.status == 409
    with pytest.raises(AdminError) as info:
        admin.create_proxy("bad", "nowhere", "127.0.0.1:1")
    assert info.value.status == 400
    admin.delete_proxy("extra")
    assert "extra" not in admin.proxies()


def test_admin_refuses_non_loopback_unless_allowed() -> None:
    with pytest.raises(ValueError, match="loopback"):
        AdminServer([], ("0.0.0.0", 0))
    AdminServer([], ("0.0.0.0", 0), allow_remote=True)  # constructing is enough


def test_admin_server_leaks_no_sockets() -> None:
    baseline = open_fds()
    for _ in range(3):
        with AdminServer([], ("127.0.0.1", 0)) as server:
            assert raw(server, b"GET / HTTP/1.1\r\n\r\n")[0] == 200
    wait_until(lambda: open_fds() <= baseline, what="fds back")
