"""The admin API is a local tool, not an open door: attacked as a web page would attack it.

A page the developer opens while ``outlast proxy`` runs can send requests to
``http://127.0.0.1:8474``: "simple" cross-origin requests (``Content-Type:
text/plain``, no preflight), and, after DNS rebinding, requests under its own
host name whose answers it can read. Before, ``POST /proxies`` with
``Origin: https://evil.example``, ``Content-Type: text/plain`` and ``listen:
0.0.0.0:N`` got a 201 and a listener open to the network in front of a
trust-auth superuser. Every test here sends real HTTP requests; the last one
drives a real headless Chromium against the API.
"""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_kit import EchoServer

from outlast.chaos import AdminClient, AdminError, AdminServer, Proxy

EVIL = "https://evil.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[EchoServer, Proxy, AdminServer]]:
    with EchoServer() as echo, Proxy(upstream=echo.address, name="pg") as proxy:
        with AdminServer([proxy], ("127.0.0.1", 0)) as server:
            yield echo, proxy, server


@pytest.fixture
def server(setup: tuple[EchoServer, Proxy, AdminServer]) -> Iterator[AdminServer]:
    setup[1].clear()
    yield setup[2]
    setup[1].clear()


def send(
    server: AdminServer,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One real HTTP request; `headers` replace what http.client would send (Host too)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def legit(server: AdminServer, **extra: str) -> dict[str, str]:
    """The headers a legitimate client sends."""
    return {
        "Host": f"127.0.0.1:{server.port}",
        "Authorization": f"Bearer {server.token}",
        "Content-Type": "application/json",
        **extra,
    }


def nothing_changed(server: AdminServer, listen_port: int | None = None) -> None:
    state = server.client().proxies()
    assert set(state) == {"pg"} and state["pg"]["faults"] == []
    if listen_port is not None:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen_port), timeout=2).close()


def test_the_reported_attack_is_refused(server: AdminServer) -> None:
    """The issue's request, exactly: a simple cross-origin POST with no token."""
    port = free_port()  # (the issue used 0.0.0.0; a test listens on loopback only)
    body = json.dumps({"name": "evil", "listen": f"127.0.0.1:{port}", "upstream": "127.0.0.1:1"})
    status, headers, _ = send(
        server,
        "POST",
        "/proxies",
        {"Host": f"127.0.0.1:{server.port}", "Origin": EVIL, "Content-Type": "text/plain"},
        body.encode(),
    )
    assert status == 403
    assert not any(h.startswith("access-control-") for h in headers)
    nothing_changed(server, port)


FAULT = json.dumps({"type": "down"}).encode()


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"Origin": EVIL}, 403),
        ({"Origin": "null"}, 403),  # sandboxed iframes, file:// pages
        ({"Origin": "http://127.0.0.1:1"}, 403),  # another local service's page
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Host": "evil.example"}, 403),  # DNS rebinding: the page's own name
        ({"Host": "evil.example:{port}"}, 403),
        ({"Host": "127.0.0.1.evil.example:{port}"}, 403),
        ({"Content-Type": "text/plain"}, 415),  # a simple request: no preflight
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({"Content-Type": None}, 415),
        ({"Authorization": None}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer {token}x"}, 401),
        ({"Authorization": "Basic {token}"}, 401),
        ({"Host": None}, 400),
    ],
)
def test_each_guard_holds_on_its_own(
    server: AdminServer, change: dict[str, str | None], status: int
) -> None:
    """Everything else is what a legitimate client sends, the token included."""
    headers = legit(server)
    for name, value in change.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value.format(port=server.port, token=server.token)
    if "Host" not in headers:  # http.client adds one unless told otherwise
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
        try:
            conn.putrequest("POST", "/proxies/pg/faults", skip_host=True)
            for name, value in {**headers, "Content-Length": str(len(FAULT))}.items():
                conn.putheader(name, value)
            conn.endheaders(FAULT)
            got = conn.getresponse().status
        finally:
            conn.close()
    else:
        got, answer_headers, _ = send(server, "POST", "/proxies/pg/faults", headers, FAULT)
        assert not any(h.startswith("access-control-") for h in answer_headers)
    assert got == status
    nothing_changed(server)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/proxies"),
        ("GET", "/proxies/pg"),
        ("GET", "/proxies/pg/logins"),
        ("DELETE", "/proxies/pg/logins"),
        ("DELETE", "/proxies/pg"),
        ("POST", "/reset"),
        ("OPTIONS", "/proxies"),  # a CORS preflight
    ],
)
def test_no_route_answers_without_the_token(server: AdminServer, method: str, path: str) -> None:
    headers = {"Host": f"127.0.0.1:{server.port}", "Content-Type": "application/json"}
    status, answer, body = send(server, method, path, headers, b"{}" if method == "POST" else None)
    assert status == 401 and answer.get("www-authenticate", "").startswith("Bearer")
    assert b"pg" not in body  # nothing about the proxies leaks
    nothing_changed(server)


def test_a_preflight_from_another_origin_is_refused(server: AdminServer) -> None:
    status, headers, _ = send(
        server,
        "OPTIONS",
        "/proxies/pg/faults",
        {
            "Host": f"127.0.0.1:{server.port}",
            "Origin": EVIL,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert status == 403
    assert not any(h.startswith("access-control-") for h in headers)


def test_duplicated_security_headers_are_a_bad_request(server: AdminServer) -> None:
    raw = (
        f"GET /proxies HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nHost: evil.example\r\n"
        f"Authorization: Bearer {server.token}\r\n\r\n"
    ).encode()
    with socket.create_connection(server.address, timeout=15) as s:
        s.sendall(raw)
        assert s.recv(100).startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"Host": "localhost:{port}"},
        {"Host": "LOCALHOST:{port}"},
        {"Host": "[::1]:{port}"},
        {"Host": "127.0.0.1"},
        {"Origin": "http://127.0.0.1:{port}"},  # same origin
        {"Sec-Fetch-Site": "same-origin"},
        {"Content-Type": "application/json; charset=utf-8"},
        {"Authorization": "bearer {token}"},
    ],
)
def test_legitimate_requests_pass(server: AdminServer, extra: dict[str, str]) -> None:
    headers = legit(server)
    headers.update({k: v.format(port=server.port, token=server.token) for k, v in extra.items()})
    status, _, body = send(server, "POST", "/proxies/pg/faults", headers, FAULT)
    assert status == 201, body
    assert [f["type"] for f in server.client().faults("pg")] == ["down"]


def test_host_names_can_be_allowed(setup: tuple[EchoServer, Proxy, AdminServer]) -> None:
    with AdminServer([], ("127.0.0.1", 0), allowed_hosts=["chaos"]) as server:
        for host, status in (("chaos:8474", 200), ("Chaos", 200), ("chaos.evil.example", 403)):
            got, _, _ = send(server, "GET", "/proxies", legit(server, Host=host))
            assert got == status, host


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0", "10.1.2.3:0", "db.example.com:0"])
def test_proxies_created_through_the_api_stay_on_loopback(server: AdminServer, listen: str) -> None:
    with pytest.raises(AdminError) as info:
        server.client().create_proxy("wide", listen, "127.0.0.1:1")
    assert info.value.status == 403 and "loopback" in info.value.message
    nothing_changed(server)


def test_loopback_proxies_can_still_be_created(server: AdminServer) -> None:
    client = server.client()
    for name, listen in (("a", "127.0.0.1:0"), ("b", "localhost:0")):
        assert client.create_proxy(name, listen, "127.0.0.1:1")["name"] == name
        client.delete_proxy(name)


def test_remote_proxies_need_the_explicit_option(setup: tuple[EchoServer, Proxy, AdminServer]):
    with AdminServer([], ("127.0.0.1", 0), allow_remote_proxies=True) as server:
        with pytest.raises(AdminError) as info:
            # 10.1.2.3 is not ours: binding fails, but the loopback rule no longer refuses
            server.client().create_proxy("wide", "10.1.2.3:0", "127.0.0.1:1")
        assert info.value.status == 409 and "cannot listen" in info.value.message


def test_tokens_are_random_unless_given_and_checked() -> None:
    first, second = AdminServer([], ("127.0.0.1", 0)), AdminServer([], ("127.0.0.1", 0))
    assert first.token != second.token and len(first.token) >= 32
    assert AdminServer([], ("127.0.0.1", 0), token="given-token-123").token == "given-token-123"
    for bad in ("", "has space", "tab\tin", "nön-ascii", "new\nline"):
        with pytest.raises(ValueError, match="admin token") as info:
            AdminServer([], ("127.0.0.1", 0), token=bad)
        assert not bad or bad not in str(info.value)


def test_the_python_api_keeps_working(setup: tuple[EchoServer, Proxy, AdminServer]) -> None:
    server = setup[2]
    client = server.client()
    with client.fault("pg", "latency", ms=1):
        assert [f["type"] for f in client.faults("pg")] == ["latency"]
    client.reset()
    assert client.logins("pg") == []
    env_client_token = os.environ.get("OUTLAST_PROXY_TOKEN")
    os.environ["OUTLAST_PROXY_TOKEN"] = server.token
    try:
        assert set(AdminClient(server.url).proxies()) == {"pg"}  # token from the environment
    finally:
        if env_client_token is None:
            del os.environ["OUTLAST_PROXY_TOKEN"]
        else:
            os.environ["OUTLAST_PROXY_TOKEN"] = env_client_token


def test_refusals_are_logged_without_the_token(
    server: AdminServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="outlast.chaos")
    send(server, "POST", "/reset", legit(server, Origin=EVIL), b"{}")
    send(server, "GET", "/proxies", legit(server, Authorization="Bearer not-the-token"))
    lines = [r.getMessage() for r in caplog.records if "[ADMIN_REFUSED]" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("[ADMIN_REFUSED] 403 POST '/reset'")
    assert all(server.token not in line and "not-the-token" not in line for line in lines)


# ------------------------------------------------------------- a real browser

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
)

_EVIL_PAGE = """<!doctype html><html><body><pre id="log">running</pre><script>
const admin = "http://127.0.0.1:{admin_port}";
const log = [];
const steps = [
  // simple requests: no preflight, the response is opaque but the request is sent
  () => fetch(admin + "/proxies", {{method: "POST", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}},
        body: JSON.stringify({{name: "evil", listen: "127.0.0.1:{evil_port}",
                              upstream: "127.0.0.1:{upstream_port}"}})}}),
  () => fetch(admin + "/proxies/pg/faults", {{method: "POST", mode: "no-cors",
        headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{type: "down"}})}}),
  () => fetch(admin + "/reset", {{method: "POST", mode: "no-cors"}}),
  // a CORS request with JSON: the preflight must fail
  () => fetch(admin + "/proxies/pg/faults", {{method: "POST",
        headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{type: "down"}})}}),
  // reading the API from the page
  () => fetch(admin + "/proxies").then(r => r.text()),
];
(async () => {{
  for (const step of steps) {{
    try {{
      const r = await step();
      log.push("ok:" + (r && r.status !== undefined ? r.status : r));
    }} catch (e) {{ log.push("blocked"); }}
  }}
  document.getElementById("log").textContent = "done " + log.join(" ");
}})();
</script></body></html>"""


class _Page(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (scripts/ensure-chromium installs it)"
)
def test_a_web_page_in_a_real_browser_cannot_drive_the_api(
    setup: tuple[EchoServer, Proxy, AdminServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="outlast.chaos")
    echo, proxy, server = setup
    proxy.clear()
    evil_port = free_port()
    page = _EVIL_PAGE.format(
        admin_port=server.port, evil_port=evil_port, upstream_port=echo.port
    ).encode()
    handler = type("EvilPage", (_Page,), {"page": page})
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        assert CHROMIUM is not None
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"http://127.0.0.1:{site.server_address[1]}/",
            ],  # fmt: skip
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HOME": str(tmp_path)},
        )
    finally:
        site.shutdown()
        site.server_close()
        thread.join(10)
    marker = '<pre id="log">done '
    assert marker in result.stdout, result.stderr[-2000:]  # the page's script ran to its end
    seen = result.stdout.split(marker, 1)[1].split("<", 1)[0].split()
    assert seen == ["ok:0", "ok:0", "ok:0", "blocked", "blocked"], seen  # opaque, opaque, ...
    with pytest.raises(OSError):  # no listener was created for the page
        socket.create_connection(("127.0.0.1", evil_port), timeout=2).close()
    assert proxy.faults() == []
    nothing_changed(server, evil_port)
    refused = [r.getMessage() for r in caplog.records if "[ADMIN_REFUSED]" in r.getMessage()]
    # The page's requests reached the API and were turned away (the simple ones,
    # and the preflight of the JSON one; the browser never sent the JSON POST).
    assert len(refused) >= 4, refused
    assert all(" 403 " in line for line in refused), refused
