"""How much does `outlast.chaos.Proxy` cost? pgbench direct vs. through the proxy.

Starts a private PostgreSQL (outlast.testing.EmbeddedPostgres), initialises
pgbench tables, then runs each workload directly and through each variant,
alternating in rounds (the order rotates every round) so machine noise hits
every side alike::

    .venv/bin/python benchmarks/proxy.py                      # ~5 minutes
    .venv/bin/python benchmarks/proxy.py --seconds 2 --rounds 5 --variants uvloop,raw-epoll

Every side runs the same pgbench command (``-n -M simple -c N -j N -T s``, the
same number of runs). Prints, per workload and variant: the median TPS, the
median of the per-round ratios to direct (each ratio against the direct run of
the same round), the latency added per query (N/TPS per transaction, divided by
the statements per transaction), and the forwarder's CPU time per transaction
(a load-independent measure of its own work).

Variants: ``asyncio`` and ``uvloop`` are the real proxy (``track=False`` with
``-notrack``). The floors forward bytes and nothing else: ``bare-asyncio`` /
``bare-uvloop`` (an `asyncio.Protocol` that writes each chunk to the other
transport; ``bare-buffered-*`` the same with `asyncio.BufferedProtocol` into a
preallocated buffer), ``raw-epoll`` (one Python thread, select.epoll,
recv/send), ``threads`` (two blocking Python threads per connection,
recv_into/sendall, the GIL released while blocked), ``splice`` (the same with
os.splice through a pipe: the bytes never enter Python) and ``socat`` (C, a
process per connection; only when socat is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import select
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from outlast.chaos import Proxy
from outlast.testing import EmbeddedPostgres

WORKLOADS = {
    # id: (title, pgbench args, clients, statements per transaction)
    "select1": ("select-only, 1 client", ["-S"], 1, 1),
    "select4": ("select-only, 4 clients", ["-S"], 4, 1),
    "tpcb4": ("TPC-B-like, 4 clients", [], 4, 7),
}
Address = tuple[str, int]


class Forwarder(Protocol):
    port: int

    def stop(self) -> None: ...


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RawForwarder:
    """A minimal epoll forwarder on one thread: what any event-loop proxy costs at least."""

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

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
                            _nodelay(s)
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


class ThreadForwarder:
    """Two blocking threads per connection, copying with recv_into/sendall or os.splice."""

    def __init__(self, upstream: Address, *, splice: bool) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self._pump = self._splice if splice else self._copy
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            _nodelay(client)
            _nodelay(up)
            self._socks += [client, up]
            threading.Thread(target=self._pump, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client), daemon=True).start()

    @staticmethod
    def _copy(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(262144)
        view = memoryview(buf)
        try:
            while n := src.recv_into(buf):
                dst.sendall(view[:n])
        except OSError:
            pass
        finally:
            _shut(src, dst)

    @staticmethod
    def _splice(src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        try:
            while n := os.splice(src.fileno(), w, 262144):
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        except OSError:
            pass
        finally:
            os.close(r)
            os.close(w)
            _shut(src, dst)

    def stop(self) -> None:
        self.listener.close()
        for s in self._socks:
            s.close()


def _shut(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class BareLoop:
    """The least an asyncio proxy does: `asyncio.Protocol` (or BufferedProtocol) forwarding.

    No faults, no counters, no flow control: the event loop's own floor.
    """

    def __init__(self, upstream: Address, *, loop: str, buffered: bool = False) -> None:
        self.upstream = upstream
        self.loop = uvloop_new() if loop == "uvloop" else asyncio.new_event_loop()
        self._side = _BufferedSide if buffered else _PlainSide
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        server = self.loop.run_until_complete(
            self.loop.create_server(self._accepted, "127.0.0.1", 0)
        )
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def _accepted(self) -> asyncio.BaseProtocol:
        client = self._side()
        upstream = self._side()
        client.peer, upstream.peer = upstream, client

        async def connect() -> None:
            await self.loop.create_connection(lambda: upstream, *self.upstream)
            for data in client.early:
                upstream.transport.write(data)

        self.loop.create_task(connect())
        return client

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def uvloop_new() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _PlainSide(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _PlainSide | _BufferedSide | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport.get_extra_info("socket"))

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _BufferedSide(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.peer: _PlainSide | _BufferedSide | None = None
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.early: list[bytes] = []
        self.view = memoryview(bytearray(262144))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _nodelay(transport.get_extra_info("socket"))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(bytes(self.view[:nbytes]))
            return
        peer.transport.write(self.view[:nbytes])
        if peer.transport.get_write_buffer_size():
            self.view = memoryview(bytearray(262144))  # the transport may hold on to it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class Socat:
    """socat (C): a forked process per connection."""

    def __init__(self, upstream: Address) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,fork,reuseaddr,nodelay",
                f"TCP:{upstream[0]}:{upstream[1]},nodelay",
            ]
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("socat did not start")

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of socat and its reaped children."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        tick = os.sysconf("SC_CLK_TCK")
        return (utime + cutime) / tick, (stime + cstime) / tick

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


VARIANTS: dict[str, Callable[[Address], Forwarder]] = {
    "asyncio": lambda up: Proxy(upstream=up, loop="asyncio").start(),
    "asyncio-notrack": lambda up: Proxy(upstream=up, loop="asyncio", track=False).start(),
    "uvloop": lambda up: Proxy(upstream=up, loop="uvloop").start(),
    "uvloop-notrack": lambda up: Proxy(upstream=up, loop="uvloop", track=False).start(),
    "bare-asyncio": lambda up: BareLoop(up, loop="asyncio"),
    "bare-uvloop": lambda up: BareLoop(up, loop="uvloop"),
    "bare-buffered-asyncio": lambda up: BareLoop(up, loop="asyncio", buffered=True),
    "bare-buffered-uvloop": lambda up: BareLoop(up, loop="uvloop", buffered=True),
    "raw-epoll": RawForwarder,
    "threads": lambda up: ThreadForwarder(up, splice=False),
    "splice": lambda up: ThreadForwarder(up, splice=True),
    "socat": Socat,
}
DEFAULT_VARIANTS = ["asyncio", "uvloop", "raw-epoll", "threads", "splice", "socat"]


def process_cpu() -> tuple[float, float]:
    """(user, system) CPU seconds of this process (where the Python forwarders run)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def pgbench(
    bin_dir: Path, port: int, args: list[str], clients: int, seconds: int, jobs: int | None
) -> tuple[float, int]:
    """One pgbench run: (TPS without connection time, transactions processed)."""
    cmd = [
        str(bin_dir / "pgbench"),
        *("-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-n", "-M", "simple"),
        *("-c", str(clients), "-j", str(jobs or clients), "-T", str(seconds)),
        *args,
        "postgres",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds * 10 + 60)
    tps = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if not tps or not done:
        raise RuntimeError(f"cannot read pgbench output:\n{out.stdout}\n{out.stderr}")
    return float(tps.group(1)), int(done.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=3, help="length of one pgbench run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per workload")
    parser.add_argument("--jobs", type=int, default=None, help="pgbench -j (default: clients)")
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}"
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}")
    if "socat" in variants and shutil.which("socat") is None:
        print("socat is not installed: skipping that variant", file=sys.stderr)
        variants.remove("socat")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}")

    with EmbeddedPostgres(settings={"max_connections": 50}) as pg:
        subprocess.run(
            [
                *(str(pg.bin_dir / "pgbench"), "-i", "-q", "-s", "1"),
                *("-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "postgres"),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
        forwarders = {v: VARIANTS[v]((pg.host, pg.port)) for v in variants}
        try:
            print(
                f"python {sys.version.split()[0]}, {args.rounds} rounds x {args.seconds}s, "
                f"load average {os.getloadavg()[0]:.1f} at start"
            )
            for name in workloads:
                run_workload(name, pg, forwarders, args.rounds, args.seconds, args.jobs)
            print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        finally:
            for f in forwarders.values():
                f.stop()
    return 0


def run_workload(
    name: str,
    pg: EmbeddedPostgres,
    forwarders: dict[str, Forwarder],
    rounds: int,
    seconds: int,
    jobs: int | None,
) -> None:
    title, wargs, clients, per_txn = WORKLOADS[name]
    sides = ["direct", *forwarders]
    tps: dict[str, list[float]] = {s: [] for s in sides}
    ratios: dict[str, list[float]] = {s: [] for s in forwarders}
    user: dict[str, list[float]] = {s: [] for s in forwarders}
    system: dict[str, list[float]] = {s: [] for s in forwarders}
    for r in range(rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        this_round: dict[str, float] = {}
        for side in order:
            fwd = forwarders.get(side)
            port = pg.port if fwd is None else fwd.port
            before = fwd.cpu() if isinstance(fwd, Socat) else process_cpu()
            rate, done = pgbench(pg.bin_dir, port, wargs, clients, seconds, jobs)
            if fwd is not None:
                if isinstance(fwd, Socat):
                    time.sleep(0.2)  # let socat reap its children
                after = fwd.cpu() if isinstance(fwd, Socat) else process_cpu()
                user[side].append((after[0] - before[0]) / done * 1e6)
                system[side].append((after[1] - before[1]) / done * 1e6)
            tps[side].append(rate)
            this_round[side] = rate
        for side in forwarders:
            ratios[side].append(this_round[side] / this_round["direct"])
    direct = statistics.median(tps["direct"])
    print(f"\n{title}: direct {direct:,.0f} tps (runs: {_runs(tps['direct'])})")
    for side in forwarders:
        through = statistics.median(tps[side])
        added_us = (clients / through - clients / direct) / per_txn * 1e6
        print(
            f"  {side:<16} {through:>9,.0f} tps  {statistics.median(ratios[side]):6.1%}  "
            f"{added_us:+7.1f} us/query  cpu/txn {statistics.median(user[side]):4.1f} us user "
            f"+ {statistics.median(system[side]):4.1f} us sys  "
            f"(runs: {_runs(tps[side])})",
            flush=True,
        )


def _runs(values: list[float]) -> str:
    return " ".join(f"{v / 1000:.1f}k" for v in values)


if __name__ == "__main__":
    sys.exit(main())
