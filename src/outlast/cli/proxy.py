"""``outlast proxy``: run the fault-injecting proxy and its admin API as a server."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
from types import FrameType

from outlast.cli import fail

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``outlast proxy``."""
    parser.add_argument("--listen", default="127.0.0.1:6432", help="HOST:PORT to accept on")
    parser.add_argument("--upstream", default="127.0.0.1:5432", help="the PostgreSQL HOST:PORT")
    parser.add_argument("--admin", default="127.0.0.1:8474", help="HOST:PORT of the admin API")
    parser.add_argument("--name", default="postgres", help="the proxy's name in the admin API")
    parser.add_argument(
        "--allow-remote-admin",
        action="store_true",
        help="allow the admin API on a non-loopback address",
    )
    parser.add_argument(
        "--admin-token",
        default=None,
        help="the admin API's token (default: $OUTLAST_PROXY_TOKEN, else a random one, printed)",
    )
    parser.add_argument(
        "--admin-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the admin API may be reached by, besides IP addresses and "
        "localhost (repeatable; e.g. a compose service name)",
    )
    parser.add_argument(
        "--allow-remote-proxies",
        action="store_true",
        help="let proxies created through the admin API listen on non-loopback addresses",
    )
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="event loop"
    )
    parser.add_argument(
        "--no-check-upstream",
        action="store_true",
        help="start even when the upstream does not accept connections yet",
    )


def _fail(message: str) -> int:
    return fail("proxy", message)


def run(args: argparse.Namespace) -> int:
    """Serve the proxy and its admin API until Ctrl-C or SIGTERM (2 when it cannot start)."""
    from outlast.chaos import AdminServer, Proxy, parse_address
    from outlast.chaos._client import TOKEN_ENV

    try:
        listen = parse_address(args.listen, what="--listen")
        upstream = parse_address(args.upstream, what="--upstream")
        admin_address = parse_address(args.admin, what="--admin")
    except ValueError as exc:
        return _fail(str(exc))
    if not args.no_check_upstream:
        try:
            socket.create_connection(upstream, timeout=3.0).close()
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            return _fail(f"upstream {upstream[0]}:{upstream[1]} is unreachable: {reason}")
    token = args.admin_token or os.environ.get(TOKEN_ENV) or None
    try:
        proxy = Proxy(listen, upstream, name=args.name, loop=args.loop)
        admin = AdminServer(
            [proxy],
            admin_address,
            allow_remote=args.allow_remote_admin,
            token=token,
            allowed_hosts=args.admin_host,
            allow_remote_proxies=args.allow_remote_proxies,
        )
    except ValueError as exc:
        return _fail(str(exc))
    try:
        proxy.start()
    except OSError as exc:
        return _fail(f"cannot listen on {listen[0]}:{listen[1]}: {exc.strerror or exc}")
    try:
        admin.start()
    except OSError as exc:
        proxy.stop()
        where = f"{admin_address[0]}:{admin_address[1]}"
        return _fail(f"cannot serve the admin API on {where}: {exc.strerror or exc}")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: the user wants out now
            os._exit(128 + signum)
        stop.set()

    # Our own handlers for both signals, whatever we inherited: a CI runner or a
    # shell starts background jobs with SIGINT ignored, and Python then never
    # raises KeyboardInterrupt, so `kill -INT` (or a test's SIGINT) went unheard.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(
        f"outlast proxy {proxy.name}: {proxy.host}:{proxy.port} -> "
        f"{upstream[0]}:{upstream[1]}, admin API {admin.url}",
        flush=True,
    )
    if token is None:  # a token the user chose is theirs to know: never echo it
        print(
            f"admin API token: {admin.token}  (send 'Authorization: Bearer <token>'; "
            f"AdminClient and outlast drill read ${TOKEN_ENV})",
            flush=True,
        )
    else:
        print(f"admin API token: as given (--admin-token or ${TOKEN_ENV})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        admin.stop()
        proxy.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    print("outlast proxy: stopped", flush=True)
    return 0
