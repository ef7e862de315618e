"""A fake API shaped like a real one, to drill: a login route that hands out a
token, data routes behind it, server-assigned ids, paginated lists (Django REST
framework's ``next`` or a ``Link`` header) and per-id reads.

Its "database" is the ``down`` flag that `drill_kit.FakeInjector` flips.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    # A real server's listen backlog (uvicorn and gunicorn: 2048), not the
    # standard library's 5: the drill opens a connection per kind of traffic at
    # once, and a connection refused by a full backlog costs a 1 s SYN retransmit.
    request_queue_size = 128


TOKEN = "s3cr3t-T0ken/with+odd=chars"
PASSWORD = "pa ss:w@rd'\""
PAGE_SIZE = 7


class FakeApi:
    """modes: ``good``; ``lose`` (while down, a write is answered 201 but not stored)."""

    def __init__(self, mode: str = "good", *, pagination: str = "drf") -> None:
        self.mode = mode
        self.pagination = pagination
        self.down = False
        self.rows: dict[int, dict[str, Any]] = {}
        self.next_id = 1
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, bool]] = []  # method, path, authorised
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                ctype = "application/problem+json" if status >= 500 else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                return self.headers.get("Authorization") == f"Token {TOKEN}"

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length", "0"))
                return json.loads(self.rfile.read(length) or b"{}")

            def _unavailable(self) -> None:
                self._send(
                    503,
                    {"status": 503, "title": "Service Unavailable", "error": "SERVICE_UNAVAILABLE"},
                    {"Retry-After": "1"},
                )

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                ok = self._authorised()
                with api.lock:
                    api.requests.append((method, self.path, ok))
                if url.path in ("/health/live", "/api/ping/"):
                    self._send(200, {"status": "pass"})
                    return
                if url.path == "/api/auth/token/" and method == "POST":
                    body = self._body()
                    if body == {"username": "drill", "password": PASSWORD}:
                        self._send(200, {"token": TOKEN})
                    else:
                        self._send(400, {"non_field_errors": ["Unable to log in."]})
                    return
                if not url.path.startswith("/api/leads/"):
                    self._send(404, {"detail": "Not found."})
                    return
                if not ok:
                    self._send(401, {"detail": "Authentication credentials were not provided."})
                    return
                if method == "POST":
                    self._create(self._body())
                    return
                one = re.fullmatch(r"/api/leads/(\d+)/", url.path)
                if api.down:
                    self._unavailable()
                    return
                if one:
                    with api.lock:
                        row = api.rows.get(int(one.group(1)))
                    self._send(200, row) if row else self._send(404, {"detail": "Not found."})
                    return
                page = int(parse_qs(url.query).get("page", ["1"])[0])
                self._page(page)

            def _create(self, body: dict[str, Any]) -> None:
                if api.down and api.mode != "lose":
                    self._unavailable()
                    return
                with api.lock:
                    row = {"id": api.next_id, "name": body.get("name"), "email": body.get("email")}
                    api.next_id += 1
                    if not api.down:
                        api.rows[row["id"]] = row
                self._send(201, row)

            def _page(self, page: int) -> None:
                with api.lock:
                    rows = sorted(api.rows.values(), key=lambda r: r["id"])
                chunk = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
                more = page * PAGE_SIZE < len(rows)
                host = f"http://127.0.0.1:{api.port}"
                if api.pagination == "link":
                    headers = {"Link": f'</api/leads/?page={page + 1}>; rel="next"'} if more else {}
                    self._send(200, chunk, headers)
                    return
                nxt = f"{host}/api/leads/?page={page + 1}" if more else None
                self._send(200, {"count": len(rows), "next": nxt, "results": chunk})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
