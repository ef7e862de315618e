"""Helpers for the connection tests: a recording TCP proxy, traffic loops, hang checks."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import outlast

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
PROTOCOL_3 = 196608


class RecordingProxy:
    """A loopback TCP proxy that records the parameters of every StartupMessage."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.startups: list[dict[str, str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._handle, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _handle(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream, timeout=10)
        server.settimeout(None)
        with self._lock:
            self._socks += [client, server]
        try:
            while True:  # SSLRequest / GSSENCRequest first, then the StartupMessage
                head = _read_exact(client, 8)
                length, code = struct.unpack("!ii", head)
                body = _read_exact(client, length - 8)
                server.sendall(head + body)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    client.sendall(_read_exact(server, 1))  # 'N' (no TLS on loopback)
                    continue
                if code == PROTOCOL_3:
                    parts = body.split(b"\0")
                    params = dict(zip(parts[0:-1:2], parts[1:-1:2], strict=False))
                    self.startups.append({k.decode(): v.decode() for k, v in params.items() if k})
                break
        except OSError:
            client.close()
            server.close()
            return
        pump = threading.Thread(target=_pump, args=(server, client), daemon=True)
        pump.start()
        _pump(client, server)
        pump.join(timeout=10)

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        with self._lock:
            for sock in self._socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def dsn(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def url(self, dbname: str, driver: str | None = "psycopg") -> str:
        scheme = "postgresql" if not driver else f"postgresql+{driver}"
        return f"{scheme}://postgres@{self.host}:{self.port}/{dbname}"


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Outcome:
    started: float
    ok: bool
    fault: outlast.Fault | None = None
    error: str = ""


@dataclass
class Traffic:
    """Runs `request` in a loop on a few threads, recording every outcome."""

    request: Callable[[], object]
    threads: int = 3
    pause: float = 0.02
    outcomes: list[Outcome] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.starts.append(started)
            try:
                self.request()
            except Exception as error:
                fault = outlast.classify(error)
                if fault is None and isinstance(error, outlast.DatabaseUnavailable):
                    fault = error.fault
                    error_text = "DatabaseUnavailable"
                else:
                    error_text = type(error).__name__
                self.outcomes.append(Outcome(started, False, fault, error_text))
            else:
                self.outcomes.append(Outcome(started, True))
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        assert not any(w.is_alive() for w in self._workers), "traffic threads did not stop"

    def successes_after(self, t: float) -> int:
        return sum(1 for o in self.outcomes if o.ok and o.started >= t)

    def started_after(self, t: float) -> int:
        return sum(1 for s in self.starts if s >= t)

    def stale_failures(self, since: float = 0.0) -> list[Outcome]:
        """Failures on an existing connection (not 'the server is down while connecting').

        Only requests that started at `since` or later count: pass the moment
        the server was known to be down to leave out the requests that were in
        flight when it shut down (no pool can save those).
        """
        return [
            o
            for o in self.outcomes
            if not o.ok
            and o.started >= since
            and not (o.error == "DatabaseUnavailable" or (o.fault and o.fault.phase == "connect"))
        ]


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll `condition` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


@dataclass
class Restart:
    """What `restart_under_traffic` saw: the traffic and when the server was down / up."""

    traffic: Traffic
    down_at: float
    up_at: float


def restart_under_traffic(pg_control: Any, request: Callable[[], object]) -> Restart:
    """Stop and start the server under steady traffic from three threads.

    The server is stopped (fast shutdown: every backend is terminated), a few
    requests start while it is down, then it is started again and the traffic
    runs until 30 requests succeeded. `Restart.down_at` is when the stop had
    finished: a request that started later and failed on a pooled connection
    met a stale one; earlier ones may have been in flight at the shutdown.
    """
    traffic = Traffic(request, threads=3).start()
    try:
        assert wait_until(lambda: traffic.successes_after(0) >= 20, 30), "no warm traffic"
        pg_control.stop()
        down_at = time.monotonic()
        assert wait_until(lambda: traffic.started_after(down_at) >= 3, 30), "traffic stalled"
        pg_control.start()
        up_at = time.monotonic()
        wait_until(lambda: traffic.successes_after(up_at) >= 30, 60)
    finally:
        traffic.stop()
    return Restart(traffic, down_at, up_at)


class Hang:
    """Runs a blocking call (or a coroutine on its own loop) in a daemon thread."""

    def __init__(
        self, call: Callable[[], object] | Callable[[], Coroutine[Any, Any, object]]
    ) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._call = call
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            result = self._call()
            if asyncio.iscoroutine(result):
                asyncio.run(result)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()
