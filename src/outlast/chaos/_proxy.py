"""`Proxy`: a fault-injecting TCP proxy for PostgreSQL on its own event loop thread.

Every public method is thread-safe and blocking for at most a few event-loop
iterations: it hands the work to the proxy's loop and waits for the answer.
So the same object serves sync code, async code (whose loop is never the
proxy's), and the admin API (which runs on yet another thread).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from outlast.chaos._address import Address, new_event_loop, parse_address
from outlast.chaos._faults import FaultSpec, make_spec
from outlast.chaos._link import Link
from outlast.chaos._logins import LoginLog
from outlast.chaos._sides import ClientSide, abort_with_rst

__all__ = ["Proxy"]

T = TypeVar("T")
_LINK_FAULTS = frozenset(
    {
        "blackhole",
        "freeze",
        "latency",
        "bandwidth",
        "slow_close",
        "limit_data",
        "cut_after",
        "cut_at",
    }
)
_CALL_TIMEOUT = 30.0
#: How many ended faults keep their hit counts for `fault_info`.
_KEEP_ENDED = 256
_ids = itertools.count(1)
logger = logging.getLogger("outlast.chaos")


class Proxy:
    """A TCP proxy in front of a PostgreSQL server that injects faults on demand.

    ::

        with Proxy(listen=("127.0.0.1", 0), upstream=("127.0.0.1", 5432)) as proxy:
            with proxy.fault("reject_login", preset="starting_up"):
                ...  # connections to proxy.port fail with FATAL 57P03

    `track=False` skips the message-boundary bookkeeping (``terminate`` then
    closes live sessions without an ErrorResponse and ``cut_after`` never
    fires). `loop` picks the event loop: ``"asyncio"``, ``"uvloop"`` or
    ``"auto"`` (uvloop when installed). The parameters of the last
    `keep_logins` StartupMessages are kept for `logins` (never a password).
    """

    def __init__(
        self,
        listen: str | Address = ("127.0.0.1", 0),
        upstream: str | Address = ("127.0.0.1", 5432),
        *,
        name: str | None = None,
        loop: str = "auto",
        track: bool = True,
        connect_timeout: float = 10.0,
        backlog: int = 1024,
        keep_logins: int = 100,
    ) -> None:
        self.listen_address = parse_address(listen, what="listen")
        self.upstream = parse_address(upstream, what="upstream")
        self.name = name or f"proxy{next(_ids)}"
        new_event_loop("asyncio" if loop == "auto" else loop).close()  # validate now
        self._loop_kind = loop
        self.track = track
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        self.connect_timeout = float(connect_timeout)
        self._backlog = backlog
        self._logins = LoginLog(keep_logins)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._listening: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        self._address: Address | None = None
        self._links: dict[int, Link] = {}
        self._link_ids = itertools.count(1)
        self._faults: dict[str, FaultSpec] = {}
        self._fault_timers: dict[str, asyncio.TimerHandle] = {}
        self._cut_counts: dict[str, int] = {}
        # What each fault did (connections or messages it acted on), also for
        # the last _KEEP_ENDED faults that ended: a drill tells a scenario whose
        # fault never fired from one that passed.
        self._hits: dict[str, int] = {}
        self._ended: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._fault_ids = itertools.count(1)
        self._total = 0
        self._closed_bytes = [0, 0]
        # Calls handed to the loop and not answered yet: failed at once when the
        # loop stops, so a caller racing with stop() does not wait _CALL_TIMEOUT.
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._started_at = 0.0
        self._recorded: list[Link] | None = None  # links seen while recording

    # ----------------------------------------------------------- lifecycle

    @property
    def address(self) -> Address:
        """The ``(host, port)`` the proxy listens on (the real port after binding port 0)."""
        if self._address is None:
            raise RuntimeError("the proxy is not running")
        return self._address

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Proxy:
        """Bind the listening socket and start forwarding; raises `OSError` if binding fails."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"outlast-chaos-{self.name}", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            loop = new_event_loop(self._loop_kind)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        self.loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            loop.close()
            ready.set_exception(exc)
            return
        self._started_at = time.time()
        ready.set_result(None)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            with self._pending_lock:
                pending, self._pending = self._pending, set()
            for future in pending:
                if not future.done():
                    future.set_exception(RuntimeError(f"the proxy {self.name} stopped"))

    def stop(self) -> None:
        """Close every connection and the listening socket; idempotent."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._shutdown)
            thread.join()
        self._thread = None
        self._address = None

    def _shutdown(self) -> None:
        for timer in self._fault_timers.values():
            timer.cancel()
        self._fault_timers.clear()
        self._faults.clear()
        for link in list(self._links.values()):
            link.close()
        if self._server is not None:
            self._server.close()
        elif self._listening is not None:
            self._listening.close()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        # Let the transports finish closing before the loop stops.
        self.loop.call_later(0.05, self.loop.stop)

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Proxy:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "stopped"
        return f"<Proxy {self.name} {where} -> {self.upstream[0]}:{self.upstream[1]}>"

    # ----------------------------------------------------------- listening

    def _new_socket(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                # Lets a bound, non-listening placeholder keep the port while "down".
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _bind(self) -> socket.socket:
        """A listening socket on our address, bound and listening synchronously."""
        host, port = self._address or self.listen_address
        if self._address is None:
            # Refuse a port someone else already listens on, even with SO_REUSEPORT.
            probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            finally:
                probe.close()
        sock = self._new_socket(host, port)
        try:
            sock.listen(self._backlog)
        except BaseException:
            sock.close()
            raise
        bound = sock.getsockname()
        self._address = (bound[0], bound[1])
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        return sock

    async def _listen(self) -> None:
        await self._serve(self._bind())

    async def _serve(self, sock: socket.socket) -> None:
        self._listening = sock
        try:
            server = await self.loop.create_server(
                lambda: ClientSide(Link(self, next(self._link_ids), track=self.track)),
                sock=sock,
                backlog=self._backlog,
            )
        except BaseException:
            sock.close()
            raise
        if self._listening is not sock:  # went down again meanwhile
            server.close()
            return
        self._server = server

    def _go_down(self) -> None:
        if self._listening is None or self._address is None:
            return
        try:
            self._placeholder = self._new_socket(*self._address)
        except OSError:
            self._placeholder = None
        if self._server is not None:
            self._server.close()
        else:
            self._listening.close()
        self._server = None
        self._listening = None

    def _go_up(self) -> None:
        if self._listening is not None:
            return
        try:
            sock = self._bind()
        except OSError as exc:  # someone took the port meanwhile: stay down, say so
            logger.error("proxy %s cannot listen again on %s: %s", self.name, self._address, exc)
            return
        self._listening = sock
        self.loop.create_task(self._serve(sock))

    # ----------------------------------------------------------- links

    def link_opened(self, link: Link) -> None:
        self._links[link.id] = link
        self._total += 1
        if self._recorded is not None:
            link.watch.record = []
            self._recorded.append(link)
        for spec in list(self._faults.values()):
            if spec.kind in ("terminate",) or not _chosen(spec):
                continue
            if spec.kind in ("down", "reset"):
                self.fault_hit(spec)
                abort_with_rst(link.client)
                link.close()
                return
            if spec.kind == "reject_login":
                if link.rejecting is None:  # counted when the login is rejected
                    link.rejecting = spec
                    link.loop.call_later(self.connect_timeout * 6, link.close)
            elif spec.kind in _LINK_FAULTS:
                if spec.kind != "cut_after":  # counted when a message matches
                    self.fault_hit(spec)
                link.faults[spec.id] = spec
        link.refresh()

    def link_closed(self, link: Link) -> None:
        if self._links.pop(link.id, None) is not None:
            self._closed_bytes[0] += link.bytes_up
            self._closed_bytes[1] += link.bytes_down

    def login_seen(self, link: Link, parameters: dict[str, str], rejected: str | None) -> None:
        self._logins.record(link.id, link.peer(), parameters, rejected)

    def cut_fired(self, spec: FaultSpec) -> bool:
        """Count one cut of a ``cut_after`` or ``cut_at`` fault; False once its count is used up."""
        if spec.id not in self._faults:
            return False
        used = self._cut_counts.get(spec.id, 0) + 1
        self._cut_counts[spec.id] = used
        count = spec.params["count"]
        fired = count is None or used <= count
        if fired:
            self.fault_hit(spec)
        if count is not None and used >= count:
            self._remove(spec.id)
        return fired

    def fault_hit(self, spec: FaultSpec) -> None:
        """Count one connection or message a fault acted on."""
        if spec.id in self._hits:
            self._hits[spec.id] += 1

    # ----------------------------------------------------------- calls into the loop

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.running:
            raise RuntimeError(f"the proxy {self.name} is not running")
        if self._thread is threading.current_thread():
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.done():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        with self._pending_lock:
            self._pending.add(future)
        try:
            self.loop.call_soon_threadsafe(run)
            thread = self._thread
            if thread is None or not thread.is_alive():  # stopped meanwhile: run() never will
                with self._pending_lock:
                    if not future.done():
                        future.set_exception(RuntimeError(f"the proxy {self.name} stopped"))
            return future.result(_CALL_TIMEOUT)
        finally:
            with self._pending_lock:
                self._pending.discard(future)

    # ----------------------------------------------------------- faults

    def add_fault(
        self,
        kind: str,
        duration: float | None = None,
        toxicity: float = 1.0,
        **params: Any,
    ) -> str:
        """Start a fault now; returns its id. Raises `ValueError` for a bad option.

        `duration` (seconds) removes it automatically; `toxicity` is the share of
        connections it applies to (each connection is drawn once).
        """
        return self.add_fault_from(kind, duration=duration, toxicity=toxicity, params=params)

    def add_fault_from(
        self,
        kind: object,
        *,
        duration: object = None,
        toxicity: object = 1.0,
        params: Mapping[str, Any] | None = None,
    ) -> str:
        """`add_fault` for untrusted input (the admin API): every value is checked."""
        spec = make_spec("", kind, duration=duration, toxicity=toxicity, params=params)
        return self._call(self._add, spec)

    def _add(self, spec: FaultSpec) -> str:
        fault_id = f"{spec.kind}-{next(self._fault_ids)}"
        spec = FaultSpec(fault_id, spec.kind, spec.params, spec.toxicity, spec.duration)
        self._faults[fault_id] = spec
        self._hits[fault_id] = 0
        if spec.duration is not None:
            self._fault_timers[fault_id] = self.loop.call_later(
                spec.duration, self._remove, fault_id
            )
        if spec.kind == "down" and spec.toxicity >= 1.0:
            self._go_down()
        for link in list(self._links.values()):
            if link.closed or not _chosen(spec):
                continue
            if spec.kind in ("down", "reset", "terminate") or (
                spec.kind in _LINK_FAULTS and spec.kind != "cut_after"
            ):
                self.fault_hit(spec)
            try:
                if spec.kind == "down":
                    link.close()
                elif spec.kind == "reset":
                    link.close(rst=True)
                elif spec.kind == "terminate":
                    link.terminate()
                elif spec.kind in _LINK_FAULTS:
                    link.attach(spec)
            except RuntimeError:
                # The link's transport is already closed but the link was not
                # told yet: uvloop refuses the write ("the handler is closed";
                # the standard loop ignores it). Finish that link; the others
                # still get the fault. (Seen once in a soak: one such link made
                # the whole add fail with a 409, the fault half applied.)
                link.close()
        return fault_id

    def remove_fault(self, fault_id: str) -> None:
        """Stop a fault; raises `KeyError` if no such fault is active."""
        if not self._call(self._remove, fault_id):
            raise KeyError(fault_id)

    def _remove(self, fault_id: str) -> bool:
        spec = self._faults.pop(fault_id, None)
        if spec is None:
            return False
        timer = self._fault_timers.pop(fault_id, None)
        if timer is not None:
            timer.cancel()
        self._cut_counts.pop(fault_id, None)
        self._ended[fault_id] = {**spec.as_dict(), "hits": self._hits.pop(fault_id, 0)}
        while len(self._ended) > _KEEP_ENDED:
            self._ended.popitem(last=False)
        if spec.kind == "down" and not any(
            f.kind == "down" and f.toxicity >= 1.0 for f in self._faults.values()
        ):
            self._go_up()
        if spec.kind in _LINK_FAULTS:
            for link in list(self._links.values()):
                link.detach(fault_id)
        return True

    def clear(self) -> None:
        """Remove every fault (connections that survived them keep going)."""
        self._call(self._clear)

    def _clear(self) -> None:
        for fault_id in list(self._faults):
            self._remove(fault_id)

    def faults(self) -> list[dict[str, Any]]:
        """The active faults, oldest first, each with its ``hits`` so far."""
        return self._call(self._active_faults)

    def _active_faults(self) -> list[dict[str, Any]]:
        return [{**f.as_dict(), "hits": self._hits.get(f.id, 0)} for f in self._faults.values()]

    def fault_info(self, fault_id: str) -> dict[str, Any]:
        """One fault, active or among the recently ended, with ``hits`` and ``active``.

        ``hits`` counts the connections or messages it acted on: connections
        dropped, reset, terminated, blackholed, frozen, slowed...; logins
        rejected; messages cut. A ``down`` fault's count misses the connections
        refused while the port was closed (the kernel refuses them). Raises
        `KeyError` for a fault it does not know (or no longer remembers).
        """

        def run() -> dict[str, Any]:
            spec = self._faults.get(fault_id)
            if spec is not None:
                return {**spec.as_dict(), "hits": self._hits.get(fault_id, 0), "active": True}
            ended = self._ended.get(fault_id)
            if ended is None:
                raise KeyError(fault_id)
            return {**ended, "active": False}

        return self._call(run)

    @contextlib.contextmanager
    def fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> Iterator[str]:
        """Apply a fault for the duration of a ``with`` block."""
        fault_id = self.add_fault(kind, duration=duration, toxicity=toxicity, **params)
        try:
            yield fault_id
        finally:
            if self.running:
                self._call(self._remove, fault_id)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list[dict[str, Any]]]:
        """Record every protocol message of the connections live or opened in the block.

        Yields a list that is filled when the block ends: one dict per
        connection, ``{"connection": id, "messages": [...]}``, each message
        ``{"direction": "upstream" | "downstream", "type": "Q", "length": n}``
        plus ``"sql"`` for a client message that carries or runs SQL (``Q``,
        ``Parse``, the ``Execute`` of a parsed statement), both directions in the order
        the proxy handled them (the StartupMessage is not a typed message and
        is not listed). A test records one clean run, then replays it with one
        ``cut_at`` fault per position. Needs message tracking (``track=True``).
        """
        out: list[dict[str, Any]] = []
        self._call(self._start_recording)
        try:
            yield out
        finally:
            if self.running:
                out.extend(self._call(self._stop_recording))

    def _start_recording(self) -> None:
        if self._recorded is not None:
            raise RuntimeError(f"the proxy {self.name} is already recording")
        self._recorded = []
        for link in self._links.values():
            link.watch.record = []
            self._recorded.append(link)
            link.refresh()

    def _stop_recording(self) -> list[dict[str, Any]]:
        links, self._recorded = self._recorded or [], None
        out = []
        for link in links:
            messages, link.watch.record = link.watch.record or [], None
            link.refresh()
            out.append({"connection": link.id, "messages": messages})
        return out

    def close_connections(self) -> int:
        """Close every live connection (FIN); returns how many were closed."""

        def run() -> int:
            links = list(self._links.values())
            for link in links:
                link.close()
            return len(links)

        return self._call(run)

    def logins(self) -> list[dict[str, Any]]:
        """The most recent logins, oldest first: one dict per StartupMessage.

        ``{"connection": id, "client": "host:port", "at": epoch seconds,
        "parameters": {"user": ..., "database": ..., "application_name": ...,
        "options": ...}, "rejected": None or the SQLSTATE reject_login answered}``.
        """
        return self._call(self._logins.entries)

    def clear_logins(self) -> None:
        """Forget the recorded logins."""
        self._call(self._logins.clear)

    def stats(self, *, connections: bool = False) -> dict[str, Any]:
        """Counters: live and total connections, bytes each way, faults, state.

        With `connections`, also ``links`` (each live connection, with its
        ``login`` parameters) and ``logins`` (the recent logins).
        """

        def run() -> dict[str, Any]:
            live = list(self._links.values())
            host, port = self.address
            out: dict[str, Any] = {
                "name": self.name,
                "listen": f"{host}:{port}",
                "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
                "listening": self._listening is not None,
                "connections": len(live),
                "total_connections": self._total,
                "bytes_up": self._closed_bytes[0] + sum(x.bytes_up for x in live),
                "bytes_down": self._closed_bytes[1] + sum(x.bytes_down for x in live),
                "faults": self._active_faults(),
            }
            if connections:
                out["links"] = [x.info() for x in live]
                out["logins"] = self._logins.entries()
            return out

        return self._call(run)


def _chosen(spec: FaultSpec) -> bool:
    return spec.toxicity >= 1.0 or random.random() < spec.toxicity
