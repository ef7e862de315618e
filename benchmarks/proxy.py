"""How much does `outlast.chaos.Proxy` cost? pgbench direct vs. through the proxy.

Starts a private PostgreSQL (outlast.testing.EmbeddedPostgres), initialises
pgbench tables, then runs each workload directly and through each proxy
variant, alternating in rounds so machine noise hits every side alike::

    .venv/bin/python benchmarks/proxy.py                      # ~3 minutes
    .venv/bin/python benchmarks/proxy.py --seconds 3 --rounds 2 --variants asyncio

Prints, per workload, the median TPS, the ratio to direct, and the latency the
proxy adds per query (for N clients: N/TPS per transaction; TPC-B-like
transactions hold 7 statements).
"""

from __future__ import annotations

import argparse
import re
import select
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from outlast.chaos import Proxy
from outlast.testing import EmbeddedPostgres

WORKLOADS = {
    # name: (pgbench args, clients, statements per transaction)
    "select-only, 1 client": (["-S"], 1, 1),
    "select-only, 4 clients": (["-S"], 4, 1),
    "TPC-B-like, 4 clients": ([], 4, 7),
}
VARIANTS: dict[str, dict[str, Any]] = {
    "asyncio": {"loop": "asyncio", "track": True},
    "asyncio-notrack": {"loop": "asyncio", "track": False},
    "uvloop": {"loop": "uvloop", "track": True},
    "raw-epoll": {},  # the floor: a bare epoll recv/send loop, no faults, no asyncio
}


class RawForwarder:
    """A minimal epoll forwarder on a thread: what any Python proxy costs at least."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RawForwarder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._wake_w.send(b"x")
        self._thread.join(10)
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()

    def _run(self) -> None:
        ep = select.epoll()
        ep.register(self.listener.fileno(), select.EPOLLIN)
        ep.register(self._wake_r.fileno(), select.EPOLLIN)
        socks: dict[int, socket.socket] = {}
        peer: dict[int, socket.socket] = {}
        try:
            while True:
                for fd, _ in ep.poll():
                    if fd == self._wake_r.fileno():
                        return
                    if fd == self.listener.fileno():
                        client, _ = self.listener.accept()
                        up = socket.create_connection(self.upstream)
                        for s in (client, up):
                            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                            s.setblocking(False)
                            socks[s.fileno()] = s
                            ep.register(s.fileno(), select.EPOLLIN)
                        peer[client.fileno()], peer[up.fileno()] = up, client
                        continue
                    sock = socks.get(fd)
                    if sock is None:
                        continue
                    try:
                        data = sock.recv(262144)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if data:
                        peer[fd].setblocking(True)
                        peer[fd].sendall(data)
                        peer[fd].setblocking(False)
                        continue
                    other = peer.pop(fd)
                    peer.pop(other.fileno(), None)
                    for s in (sock, other):
                        socks.pop(s.fileno(), None)
                        ep.unregister(s.fileno())
                        s.close()
        finally:
            for s in socks.values():
                s.close()
            ep.close()


def pgbench(bin_dir: Path, port: int, args: list[str], clients: int, seconds: int) -> float:
    cmd = [
        str(bin_dir / "pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "postgres",
        "-n",
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-T",
        str(seconds),
        *args,
        "postgres",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 10 + 60)
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    if not match:
        raise RuntimeError(f"cannot read pgbench output:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per workload")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}")

    with EmbeddedPostgres(settings={"max_connections": 50}) as pg:
        subprocess.run(
            [
                str(pg.bin_dir / "pgbench"),
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "postgres",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        proxies: dict[str, Proxy | RawForwarder] = {}
        for v in variants:
            if v == "raw-epoll":
                proxies[v] = RawForwarder((pg.host, pg.port)).start()
            else:
                proxies[v] = Proxy(upstream=(pg.host, pg.port), **VARIANTS[v]).start()
        try:
            print(
                f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.seconds}s, "
                "median TPS (ratio to direct, latency added per query)"
            )
            for name, (wargs, clients, per_txn) in WORKLOADS.items():
                tps: dict[str, list[float]] = {"direct": [], **{v: [] for v in variants}}
                for _ in range(args.rounds):
                    tps["direct"].append(pgbench(pg.bin_dir, pg.port, wargs, clients, args.seconds))
                    for v in variants:
                        tps[v].append(
                            pgbench(pg.bin_dir, proxies[v].port, wargs, clients, args.seconds)
                        )
                direct = statistics.median(tps["direct"])
                print(f"\n{name}: direct {direct:,.0f} tps")
                for v in variants:
                    through = statistics.median(tps[v])
                    added_us = (clients / through - clients / direct) / per_txn * 1e6
                    print(
                        f"  {v:<22} {through:>9,.0f} tps  {through / direct:6.1%}  "
                        f"{added_us:+6.1f} us/query"
                    )
        finally:
            for p in proxies.values():
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
