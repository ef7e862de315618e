"""Deliberately good and broken fake services for testing the drill.

A stdlib ThreadingHTTPServer on 127.0.0.1 whose "database" is a flag flipped
by `FakeInjector` (or, with `probe=...`, a TCP connect to a chaos proxy).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    # A real server's listen backlog (uvicorn and gunicorn: 2048), not the
    # standard library's 5: the drill opens a connection per kind of traffic at
    # once, and a connection refused by a full backlog costs a 1 s SYN retransmit.
    request_queue_size = 128


class FakeService:
    """modes: good,500, lose, hang, no_retry_after, dead_loop, double."""

    def __init__(
        self, mode: str = "good", *, hang: float = 3.0, probe: tuple[str, int] | None = None
    ):
        self.mode = mode
        self.hang = hang
        self.probe = probe
        self.down = False
        self.loop_alive = True
        self.rows: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                ctype = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _db_fault(self) -> bool:
                if not service.db_down():
                    return False
                if service.mode in {"dead_loop"}:
                    service.loop_alive = False
                if service.mode == "500":
                    self._send(500, {"detail": "Internal Server Error"})
                elif service.mode == "hang":
                    time.sleep(service.hang)
                    self._send(500, {"detail": "timeout"})
                elif service.mode == "no_retry_after":
                    self._send(503, {"status": 503, "title": "Service Unavailable"})
                elif service.mode == "lose" and self.command == "POST":
                    return False
                else:
                    self._send(
                        503,
                        {
                            "status": 503,
                            "title": "Service Unavailable",
                            "error": "SERVICE_UNAVAILABLE",
                        },
                        {"Retry-After": "1"},
                    )
                return True

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/health/live" or url.path == "/api/ping":
                    self._send(200, {"status": "pass"})
                    return
                if url.path == "/health/ready":
                    status = "pass" if service.loop_alive else "fail"
                    self._send(
                        200,
                        {
                            "status": "pass",
                            "checks": {
                                "loop:refresh": [{"status": status, "componentType": "loop"}]
                            },
                        },
                    )
                    return
                if url.path == "/api/leads":
                    if self._db_fault():
                        return
                    ids = parse_qs(url.query).get("ids", [""])[0]
                    wanted = set(ids.split(",")) if ids else None
                    with service.lock:
                        rows = [r for r in service.rows if wanted is None or r["id"] in wanted]
                    self._send(200, {"items": rows[-50:] if wanted is None else rows})
                    return
                self._send(404, {"status": 404})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if urlsplit(self.path).path != "/api/leads":
                    self._send(404, {"status": 404})
                    return
                if self._db_fault():
                    return
                if service.mode == "lose" and service.db_down():
                    self._send(201, {"id": body.get("id")})  # acknowledged, never stored
                    return
                with service.lock:
                    service.rows.append({"id": body.get("id"), "name": body.get("name")})
                    if service.mode == "double":
                        service.rows.append({"id": body.get("id"), "name": body.get("name")})
                self._send(201, {"id": body.get("id")})

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def db_down(self) -> bool:
        if self.probe is None:
            return self.down
        try:
            with socket.create_connection(self.probe, timeout=0.5):
                return False
        except OSError:
            return True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class FakeInjector:
    """Turns the fake service's database off while any fault is armed."""

    def __init__(self, service: FakeService) -> None:
        self.service = service
        self.active: dict[str, str] = {}
        self.log: list[tuple[str, str]] = []
        self._n = 0

    def add_fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> str:
        self._n += 1
        fid = f"{kind}-{self._n}"
        self.active[fid] = kind
        self.log.append(("add", kind))
        self.service.down = True
        return fid

    def remove_fault(self, fault_id: str) -> None:
        self.active.pop(fault_id, None)
        self.log.append(("remove", fault_id))
        self.service.down = bool(self.active)

    def clear(self) -> None:
        self.active.clear()
        self.service.down = False
