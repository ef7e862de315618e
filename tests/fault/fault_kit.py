"""Helpers for the fault tests: real sockets on loopback, real drivers.

`LoginRejecter` is a tiny real server that speaks just enough of the Postgres
wire protocol to reject a login: it answers SSLRequest/GSSENCRequest with
``N``, reads the StartupMessage and replies with an ``ErrorResponse`` carrying
the severity, SQLSTATE and message we choose (what a real server does for
28P01 / 57P03 / 53300, and what Neon's proxy does with ``XX000``). The drivers
then build their exceptions themselves.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import outlast

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def error_response(severity: str, code: str, message: str) -> bytes:
    fields = b""
    for tag, value in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", message)):
        fields += tag + value.encode() + b"\0"
    fields += b"\0"
    return b"E" + struct.pack("!I", len(fields) + 4) + fields


class LoginRejecter:
    """Listen on 127.0.0.1 and reject every login with one ErrorResponse."""

    def __init__(self, severity: str, code: str, message: str) -> None:
        self.reply = error_response(severity, code, message)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.startups = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with conn:
                for _ in range(4):  # SSLRequest, GSSENCRequest, then the StartupMessage
                    (length,) = struct.unpack("!I", _recv_exact(conn, 4))
                    body = _recv_exact(conn, length - 4)
                    (code,) = struct.unpack("!I", body[:4])
                    if code in (SSL_REQUEST, GSSENC_REQUEST):
                        conn.sendall(b"N")
                        continue
                    if code == CANCEL_REQUEST:
                        return
                    self.startups += 1
                    conn.sendall(self.reply)
                    return
        except OSError:
            return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@contextmanager
def login_rejecter(severity: str, code: str, message: str) -> Iterator[LoginRejecter]:
    server = LoginRejecter(severity, code, message)
    try:
        yield server
    finally:
        server.close()


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- drivers


Step = str | Callable[[], None]


def connect_and_query(
    driver: str,
    host: str,
    port: int,
    *,
    timeout: int = 5,
    dbname: str = "postgres",
    user: str = "postgres",
    password: str | None = None,
    steps: Sequence[Step] = ("SELECT 1",),
    application_name: str = "outlast-fault-test",
) -> None:
    """Connect with `driver` and run `steps` in one transaction.

    A step is SQL (no parameters) or a callable run between two statements
    (to let a helper connection interfere). Lets the driver's exception out.
    """
    if driver == "psycopg":
        import psycopg

        with psycopg.connect(
            host=host,
            port=port,
            user=user,
            dbname=dbname,
            password=password,
            connect_timeout=timeout,
            application_name=application_name,
        ) as conn:
            for step in steps:
                conn.execute(step) if isinstance(step, str) else step()  # type: ignore[func-returns-value]
    elif driver == "psycopg2":
        import psycopg2

        conn2 = psycopg2.connect(
            host=host,
            port=port,
            user=user,
            dbname=dbname,
            password=password,
            connect_timeout=timeout,
            application_name=application_name,
        )
        try:
            cur = conn2.cursor()
            for step in steps:
                cur.execute(step) if isinstance(step, str) else step()  # type: ignore[func-returns-value]
        finally:
            conn2.close()
    elif driver == "asyncpg":
        import asyncpg

        async def run() -> None:
            conn3 = await asyncpg.connect(
                host=host,
                port=port,
                user=user,
                database=dbname,
                password=password,
                timeout=timeout,
                server_settings={"application_name": application_name},
            )
            try:
                await conn3.execute("BEGIN")  # the others run inside a transaction too
                for step in steps:
                    await conn3.execute(step) if isinstance(step, str) else step()
            finally:
                await conn3.close()

        asyncio.run(run())
    elif driver.startswith("sqlalchemy+"):
        import sqlalchemy as sa

        dbapi = driver.partition("+")[2]
        url = sa.URL.create(
            f"postgresql+{dbapi}",
            username=user,
            password=password,
            host=host,
            port=port,
            database=dbname,
        )
        if dbapi == "asyncpg":
            from sqlalchemy.ext.asyncio import create_async_engine

            async def run_async() -> None:
                engine = create_async_engine(
                    url,
                    connect_args={
                        "timeout": timeout,
                        "server_settings": {"application_name": application_name},
                    },
                )
                try:
                    async with engine.connect() as c:
                        for step in steps:
                            await c.execute(sa.text(step)) if isinstance(step, str) else step()
                finally:
                    await engine.dispose()

            asyncio.run(run_async())
        else:
            engine = sa.create_engine(
                url, connect_args={"connect_timeout": timeout, "application_name": application_name}
            )
            try:
                with engine.connect() as c:
                    for step in steps:
                        c.execute(sa.text(step)) if isinstance(step, str) else step()
            finally:
                engine.dispose()
    else:  # pragma: no cover - test bug
        raise AssertionError(driver)


DRIVERS = [
    "psycopg",
    "psycopg2",
    "asyncpg",
    "sqlalchemy+psycopg",
    "sqlalchemy+psycopg2",
    "sqlalchemy+asyncpg",
]


def capture(fn: Callable[[], Any]) -> BaseException:
    """Run `fn`, return the exception it raised (fail if it raised none)."""
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception, got none")


def classify_real(fn: Callable[[], Any], **kw: Any) -> tuple[outlast.Fault, BaseException]:
    exc = capture(fn)
    fault = outlast.classify(exc, **kw)
    assert fault is not None, f"not classified: {type(exc).__module__}.{type(exc).__name__}: {exc}"
    return fault, exc
