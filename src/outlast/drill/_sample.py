"""Read a service's resources once a second: from /proc, its ``/metrics``, and Postgres.

Three sources, each optional, each read without touching the service's code:

- ``/proc/<pid>`` (Linux) for the process the soak was given *and its
  descendants* (a gunicorn master and its workers): resident memory, open
  file descriptors, OS threads;
- the service's Prometheus exposition (``outlast.prometheus``): pool
  connections (``db_client_connection_count``, idle + used), asyncio tasks and
  Python threads (``outlast_asyncio_tasks``, ``outlast_python_threads``), and
  memory and file descriptors (prometheus_client's process collector) when no
  pid was given;
- ``pg_stat_activity`` over a direct connection (``--dsn``): the server's
  client connections to the service's database, the soak's own excluded.

Where two sources give the same resource, /proc wins: it sees every process of
the service, not only the worker that answered the scrape.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PG_CONNECTIONS_SQL",
    "ProcStats",
    "Sample",
    "Sampler",
    "descendants",
    "metrics_values",
    "parse_exposition",
    "proc_stats",
]


@dataclass
class Sample:
    """One second of a soak: each resource, or None where it could not be read."""

    at: float
    rss: float | None = None
    fds: float | None = None
    threads: float | None = None
    tasks: float | None = None
    pool: float | None = None
    server: float | None = None
    processes: int | None = None  # how many processes /proc summed (a master and workers)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> float | None:
        value = getattr(self, name)
        return None if value is None else float(value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "rss": self.rss,
            "fds": self.fds,
            "threads": self.threads,
            "tasks": self.tasks,
            "pool": self.pool,
            "server": self.server,
            "processes": self.processes,
        }


# -- /proc -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStats:
    processes: int
    rss: int  # bytes
    fds: int
    threads: int


def _ppid(stat: str) -> int:
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def descendants(pid: int, parents: Mapping[int, int]) -> list[int]:
    """``pid`` and every process below it, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return sorted(set(out))


def _parents(proc: Path) -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = _ppid((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # it ended while we looked
    return parents


def status_fields(text: str) -> dict[str, int]:
    """``VmRSS`` (bytes) and ``Threads`` from a /proc/<pid>/status text."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key == "VmRSS":
            out["rss"] = int(rest.split()[0]) * 1024  # reported in kB
        elif key == "Threads":
            out["threads"] = int(rest.split()[0])
    return out


def proc_stats(pid: int, *, proc: Path = Path("/proc")) -> ProcStats:
    """Memory, fds and threads of ``pid`` and its descendants (OSError if it is gone)."""
    if not (proc / str(pid)).exists():
        raise ProcessLookupError(f"no process {pid}")
    pids = descendants(pid, _parents(proc))
    rss = fds = threads = n = 0
    for p in pids:
        try:
            fields = status_fields((proc / str(p) / "status").read_text())
            nfd = len(os.listdir(proc / str(p) / "fd"))
        except OSError:
            if p == pid:
                raise
            continue  # a worker that ended while we looked
        rss += fields.get("rss", 0)
        threads += fields.get("threads", 0)
        fds += nfd
        n += 1
    return ProcStats(n, rss, fds, threads)


# -- Prometheus exposition ------------------------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_exposition(text: str) -> dict[str, float]:
    """Sum every series of each metric family name in a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def metrics_values(families: Mapping[str, float]) -> dict[str, float]:
    """The soak's resources from parsed metrics (absent families: absent keys)."""
    pick = {
        "rss": "process_resident_memory_bytes",
        "fds": "process_open_fds",
        "threads": "outlast_python_threads",
        "tasks": "outlast_asyncio_tasks",
        "pool": "db_client_connection_count",
    }
    return {key: families[name] for key, name in pick.items() if name in families}


# -- pg_stat_activity -------------------------------------------------------------------

#: Client connections to the service's database (the DSN's), the soak's own excluded.
PG_CONNECTIONS_SQL = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


class _Server:
    """One autocommit connection that counts the service's server connections."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None

    async def count(self) -> int:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=3, application_name="outlast soak"
            )
        cur = await self.conn.execute(PG_CONNECTIONS_SQL)
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class Sampler:
    """Takes a `Sample` every ``every`` seconds until stopped.

    ``client`` is an httpx.AsyncClient for the service (``metrics_path`` on it);
    ``clock`` returns seconds since the soak began. Nothing here raises: a
    source that fails leaves its resources None for that second, and its error
    (a type name, never a DSN) in ``Sample.errors``.
    """

    def __init__(
        self,
        *,
        clock: Any,
        pid: int | None = None,
        client: Any = None,
        metrics_path: str | None = None,
        dsn: str | None = None,
        every: float = 1.0,
        proc: Path = Path("/proc"),
    ) -> None:
        self.clock = clock
        self.pid = pid
        self.client = client
        self.metrics_path = metrics_path
        self.server = _Server(dsn) if dsn else None
        self.every = every
        self.proc = proc
        self.samples: list[Sample] = []
        self.sources: set[str] = set()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                started = self.clock()
                self.samples.append(await self.take())
                wait = max(0.0, self.every - (self.clock() - started))
                try:
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
        finally:
            if self.server is not None:
                try:
                    await self.server.close()
                except Exception:
                    pass

    async def take(self) -> Sample:
        sample = Sample(self.clock())
        found: dict[str, float] = {}
        if self.client is not None and self.metrics_path:
            try:
                async with asyncio.timeout(2.0):
                    r = await self.client.get(self.metrics_path)
                if r.status_code == 200:
                    found.update(metrics_values(parse_exposition(r.text)))
                    self.sources.add("metrics")
                else:
                    sample.errors["metrics"] = f"answered {r.status_code}"
            except Exception as exc:
                sample.errors["metrics"] = type(exc).__name__
        if self.pid is not None:
            try:
                st = await asyncio.to_thread(proc_stats, self.pid, proc=self.proc)
                found.update(rss=st.rss, fds=st.fds, threads=st.threads)
                sample.processes = st.processes
                self.sources.add("proc")
            except OSError as exc:
                sample.errors["proc"] = type(exc).__name__
        if self.server is not None:
            try:
                async with asyncio.timeout(2.0):
                    found["server"] = await self.server.count()
                self.sources.add("pg_stat_activity")
            except Exception as exc:
                sample.errors["server"] = type(exc).__name__
                conn, self.server.conn = self.server.conn, None
                if conn is not None:
                    try:
                        await conn.close()
                    except Exception:
                        pass
        for key, value in found.items():
            setattr(sample, key, float(value))
        return sample


def series(samples: Iterable[Sample], name: str) -> list[tuple[float, float | None]]:
    return [(s.at, s.get(name)) for s in samples]
