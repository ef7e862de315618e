"""Steady concurrent HTTP traffic against a service, every request recorded.

Each kind of request (read, write, no-database ping, liveness) has its own
workers. A worker sends one request, records it, sleeps a little and repeats
until the run's deadline: every loop is bounded by that deadline and every
request by a client-side timeout of the budget plus a margin, enforced on the
whole exchange (not only per socket read).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from outlast.drill._api import dig
from outlast.drill._ledger import Ledger
from outlast.drill._route import Route

__all__ = [
    "OUTCOMES",
    "HealthSample",
    "RequestRecord",
    "Route",
    "Traffic",
    "classify_response",
    "classify_transport_error",
]

# Outcome classes of one request, as the checks and the chart see them.
OK = "ok"
UNAVAILABLE = "503"
SERVER_ERROR = "5xx"
CLIENT_ERROR = "4xx"
TIMEOUT = "timeout"
REFUSED = "refused"
RESET = "reset"
ERROR = "error"
OUTCOMES = (OK, UNAVAILABLE, SERVER_ERROR, CLIENT_ERROR, TIMEOUT, REFUSED, RESET, ERROR)

KINDS = ("read", "write", "ping", "live")


@dataclass
class RequestRecord:
    """One request: when it started (seconds since the drill began), how it went."""

    kind: str
    start: float
    latency: float
    status: int | None
    outcome: str
    retry_after: str | None = None
    content_type: str | None = None
    write_id: str | None = None
    error: str | None = None
    problem: bool = False
    outcome_unknown: bool = False  # the service said it does not know (OUTCOME_UNKNOWN)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HealthSample:
    """One poll of the service's readiness/health JSON."""

    at: float
    status: int | None
    body: Any = None
    background: dict[str, bool] = field(default_factory=dict)


def classify_response(status: int) -> str:
    if 200 <= status < 300:
        return OK
    if status == 503:
        return UNAVAILABLE
    if status >= 500:
        return SERVER_ERROR
    if status >= 400:
        return CLIENT_ERROR
    return OK if status < 400 else ERROR


def classify_transport_error(exc: BaseException) -> str:
    """Map an httpx/OS error to timeout / refused / reset / error."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return TIMEOUT
    cause: BaseException | None = exc
    for _ in range(8):  # walk a bounded chain of causes
        if cause is None:
            break
        if isinstance(cause, ConnectionRefusedError):
            return REFUSED
        if isinstance(cause, ConnectionResetError | BrokenPipeError):
            return RESET
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            return REFUSED
        cause = cause.__cause__ or cause.__context__
    text = str(exc).lower()
    if isinstance(exc, httpx.ConnectError):
        return REFUSED if "refused" in text or "errno 111" in text else ERROR
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return RESET
    return ERROR


def background_status(body: Any) -> dict[str, bool]:
    """Background tasks and their liveness, read from a health JSON body.

    Understands the IETF health+json shape (``checks`` mapping names to lists of
    ``{"status": ..., "componentType": ...}``) and plain ``{"alive": bool}``
    entries. A component counts as background work when its name or component
    type mentions a task, loop, thread, worker or supervisor; it is dead when its
    status is ``fail`` or ``alive`` is false.
    """
    found: dict[str, bool] = {}
    words = ("task", "loop", "thread", "worker", "supervis", "background")

    def is_background(name: str, entry: Mapping[str, Any]) -> bool:
        kind = str(entry.get("componentType", ""))
        text = f"{name} {kind}".lower()
        return any(w in text for w in words)

    def alive(entry: Mapping[str, Any]) -> bool:
        if isinstance(entry.get("alive"), bool):
            return bool(entry["alive"])
        return str(entry.get("status", "pass")).lower() not in {"fail", "down", "dead", "crashed"}

    def visit(name: str, value: Any, depth: int) -> None:
        if depth > 6:
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                sub = name if len(value) == 1 else f"{name}[{i}]"
                if isinstance(item, Mapping) and isinstance(item.get("componentId"), str):
                    sub = f"{name}:{item['componentId']}"
                visit(sub, item, depth + 1)
        elif isinstance(value, Mapping):
            if name and is_background(name, value) and ("status" in value or "alive" in value):
                found[name] = found.get(name, True) and alive(value)
            for key, sub in value.items():
                if isinstance(sub, Mapping | list):
                    visit(str(key), sub, depth + 1)

    visit("", body, 0)
    return found


@dataclass
class _Spec:
    kind: str
    route: Route
    workers: int
    interval: float


class Traffic:
    """Send steady traffic to ``base_url`` until `stop()` or the deadline.

    ``clock`` returns seconds since the drill began; records carry those times.
    """

    def __init__(
        self,
        base_url: str,
        *,
        routes: Mapping[str, Route | None],
        budget: float,
        margin: float = 1.0,
        ledger: Ledger | None = None,
        clock: Callable[[], float] | None = None,
        workers: Mapping[str, int] | None = None,
        interval: float = 0.1,
        health_path: str | None = "/health/ready",
        health_interval: float = 0.5,
        write_body: Callable[[str], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        write_id: str | None = None,
    ) -> None:
        host = urlsplit(base_url).hostname
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"the drill only sends traffic to loopback services, not {host!r}")
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.timeout = budget + margin
        self.ledger = ledger or Ledger()
        t0 = time.monotonic()
        self.clock = clock or (lambda: time.monotonic() - t0)
        counts = {"read": 3, "write": 2, "ping": 1, "live": 1, **(workers or {})}
        self._specs = [
            _Spec(kind, route, counts.get(kind, 1), interval)
            for kind, route in routes.items()
            if route is not None and counts.get(kind, 1) > 0
        ]
        self.health_path = health_path
        self.health_interval = health_interval
        self.write_body = write_body or default_write_body
        # Sent with every request (credentials); never recorded or reported.
        self.headers = dict(headers or {})
        self.write_id = write_id  # where a write's answer holds the service's own id
        self.records: list[RequestRecord] = []
        self.health: list[HealthSample] = []
        self.health_supported: bool | None = None
        self._stop = asyncio.Event()
        self._clients: dict[str, httpx.AsyncClient] = {}

    def stop(self) -> None:
        self._stop.set()

    async def run(self, deadline: float) -> None:
        """Run until `stop()` or until ``clock()`` reaches ``deadline``."""
        # One client (connection pool) per kind of traffic, as in real life: a
        # liveness probe or a monitor never reuses a keep-alive connection that
        # an API request just had closed under it after a 500, so a failed
        # ping or liveness check is the service's doing, not the drill's.
        kinds = {spec.kind for spec in self._specs} | ({"health"} if self.health_path else set())
        async with contextlib.AsyncExitStack() as stack:
            for kind in sorted(kinds):
                self._clients[kind] = await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=self.base_url,
                        headers=self.headers,
                        timeout=httpx.Timeout(self.timeout),
                        limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                        trust_env=False,
                    )
                )
            tasks = [
                asyncio.create_task(self._worker(spec, deadline))
                for spec in self._specs
                for _ in range(spec.workers)
            ]
            if self.health_path:
                tasks.append(asyncio.create_task(self._health_poller(deadline)))
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._clients = {}

    async def _sleep_or_stop(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _worker(self, spec: _Spec, deadline: float) -> None:
        while not self._stop.is_set() and self.clock() < deadline:
            await self.send(spec.kind, spec.route)
            await self._sleep_or_stop(spec.interval)

    async def send(self, kind: str, route: Route) -> RequestRecord:
        client = self._clients.get(kind)
        assert client is not None, "send() runs inside run()"
        write_id: str | None = None
        body: Any = None
        if kind == "write":
            write_id = self.ledger.new_id()
            body = self.write_body(write_id)
        start = self.clock()
        t = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                resp = await client.request(
                    route.method, route.path, json=body if body is not None else None
                )
                await resp.aread()
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            rec = RequestRecord(
                kind,
                start,
                time.monotonic() - t,
                None,
                classify_transport_error(exc),
                write_id=write_id,
                error=type(exc).__name__,
            )
        else:
            ctype = resp.headers.get("content-type")
            rec = RequestRecord(
                kind,
                start,
                time.monotonic() - t,
                resp.status_code,
                classify_response(resp.status_code),
                retry_after=resp.headers.get("retry-after"),
                content_type=ctype,
                write_id=write_id,
                problem=_is_problem(resp),
                outcome_unknown=_says_outcome_unknown(resp),
            )
        if write_id is not None:
            self.ledger.record(
                write_id,
                rec.outcome,
                problem=rec.problem,
                outcome_unknown=rec.outcome_unknown,
                at=start,
                service_id=self._service_id(resp) if rec.outcome == OK else None,
            )
        self.records.append(rec)
        return rec

    def _service_id(self, resp: httpx.Response) -> str | None:
        """The service's own id of a write, from its answer (``write_id`` path)."""
        if self.write_id is None:
            return None
        try:
            value = dig(resp.json(), self.write_id)
        except ValueError:
            return None
        return None if value is None or isinstance(value, dict | list) else str(value)

    async def _health_poller(self, deadline: float) -> None:
        client = self._clients.get("health")
        assert client is not None and self.health_path
        while not self._stop.is_set() and self.clock() < deadline:
            at = self.clock()
            try:
                async with asyncio.timeout(self.timeout):
                    resp = await client.get(self.health_path)
                status: int | None = resp.status_code
                try:
                    body = resp.json()
                except ValueError:
                    body = None
            except (httpx.HTTPError, OSError, TimeoutError):
                status, body = None, None
            if status == 404:
                self.health_supported = False
                return
            if status is not None:
                self.health_supported = True
            self.health.append(HealthSample(at, status, body, background_status(body)))
            await self._sleep_or_stop(self.health_interval)


def default_write_body(write_id: str) -> dict[str, str]:
    return {"id": write_id, "name": f"drill {write_id}", "email": f"{write_id}@example.com"}


def _is_problem(resp: httpx.Response) -> bool:
    """Whether a response carries an RFC 9457 problem body (or the seeds' error field)."""
    ctype = resp.headers.get("content-type", "")
    if "problem+json" in ctype:
        return True
    try:
        body = json.loads(resp.content)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and ("status" in body or "error" in body or "title" in body)


def _says_outcome_unknown(resp: httpx.Response) -> bool:
    """Whether an error answer says the write may have been applied.

    outlast answers a COMMIT whose outcome it could not resolve with a 503
    problem whose ``error`` is ``OUTCOME_UNKNOWN``.
    """
    if resp.status_code < 500:
        return False
    try:
        body = json.loads(resp.content)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(body, dict) and body.get("error") == "OUTCOME_UNKNOWN"
