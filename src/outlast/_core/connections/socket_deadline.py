"""Client-side deadlines: shut a socket down when a call on it runs too long.

`SocketDeadline` is the last line of defence for drivers that have no
client-side timeout of their own (libpq-based ones): when a deadline passes, it
shuts the connection's socket down, so a call blocked on a link that accepts
bytes but never answers (a frozen proxy, a pooler whose server died, a
half-dead NAT) fails at once with a "connection lost" error instead of waiting
for TCP. TCP keepalives and ``tcp_user_timeout`` cannot catch that case: the
proxy's kernel acknowledges every byte.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["SocketDeadline", "connection_fileno", "socket_deadline", "transport_socket"]


def connection_fileno(conn: object) -> int | None:
    """The socket descriptor of a driver connection, found by duck typing.

    psycopg 3 and psycopg2 connections have ``fileno()``; asyncpg keeps its
    socket in the asyncio transport; SQLAlchemy's adapted connections wrap
    either in ``driver_connection``.
    """
    raw = getattr(conn, "driver_connection", None) or conn
    fileno = getattr(raw, "fileno", None)
    if callable(fileno):
        try:
            value = fileno()
        except Exception:
            return None
        return value if isinstance(value, int) and value >= 0 else None
    sock = transport_socket(raw)
    if sock is None:
        return None
    try:
        value = sock.fileno()
    except Exception:
        return None
    return value if isinstance(value, int) and value >= 0 else None


def transport_socket(conn: object) -> Any:
    """The socket of an asyncio-based connection (asyncpg: ``_transport``), or None."""
    transport = getattr(conn, "_transport", None)
    get_extra = getattr(transport, "get_extra_info", None)
    if not callable(get_extra):
        return None
    return get_extra("socket")


# --------------------------------------------------------------- deadlines


class SocketDeadline:
    """Shut a socket down when a call on it runs past its deadline.

    One daemon thread serves every armed deadline in the process (started on
    first use). `arm` returns a token; `disarm` must be called when the guarded
    call returns, in a ``finally``. A deadline that fires calls
    ``shutdown(SHUT_RDWR)`` on the socket: the blocked driver call wakes up
    with a "connection lost" error and the connection is unusable afterwards,
    which is what a pool's disconnect handling expects.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, int]] = []
        self._armed: dict[int, tuple[float, int]] = {}
        self._fired: set[int] = set()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def arm(self, fileno: int, seconds: float) -> int:
        token = next(self._ids)
        deadline = time.monotonic() + seconds
        with self._cond:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._start()
            self._armed[token] = (deadline, fileno)
            heapq.heappush(self._heap, (deadline, token, fileno))
            if self._heap[0][1] == token:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Forget a deadline; True when it had already fired."""
        with self._cond:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            # Disarmed entries stay in the heap until their time; rebuild it
            # when they dominate, so a busy process does not hoard them.
            if len(self._heap) > 2 * len(self._armed) + 256:
                self._heap = [(d, t, f) for t, (d, f) in self._armed.items()]
                heapq.heapify(self._heap)
            return False

    @contextlib.contextmanager
    def bound(self, fileno: int | None, seconds: float | None) -> Iterator[None]:
        """``with socket_deadline.bound(fd, 2.0): blocking_call()``.

        No deadline when `fileno` or `seconds` is None.
        """
        if fileno is None or seconds is None:
            yield
            return
        token = self.arm(fileno, seconds)
        try:
            yield
        finally:
            self.disarm(token)

    @property
    def armed(self) -> int:
        """How many deadlines are armed right now."""
        with self._cond:
            return len(self._armed)

    def _start(self) -> None:
        self._pid = os.getpid()
        self._heap.clear()
        self._armed.clear()
        self._thread = threading.Thread(target=self._run, name="outlast-deadline", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, token, fileno = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                if self._armed.pop(token, None) is None:
                    continue
                # Still under the lock: `disarm` cannot return between our
                # check and the shutdown, so the fd still belongs to the call.
                self._fired.add(token)
                _shutdown(fileno)


def _shutdown(fileno: int) -> None:
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


socket_deadline = SocketDeadline()
"""The process-wide `SocketDeadline`."""
