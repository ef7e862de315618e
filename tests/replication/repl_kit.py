"""Real logical replication for the replication tests: servers, WAL, consumers.

- `REPLICATION_SETTINGS`: a server that can decode (``wal_level=logical``) and
  whose WAL limits are small enough to reach in a test: 16 MB segments,
  ``max_wal_size`` of two segments (so checkpoints follow the WAL written),
  no time-based checkpoints. ``max_slot_wal_keep_size`` is a reloadable
  setting; `set_keep_size` changes it per test.
- `switch_wal`: one row and ``pg_switch_wal()``: a whole 16 MB segment of WAL
  position per step, cheaply.
- `Consumer`: a psycopg2 logical-replication consumer in a thread. It
  acknowledges the LSN of each change it processed, as Debezium does, never
  the position of a keepalive, and keeps its own "stored offset".
- `RecvLogical`: ``pg_recvlogical`` from the server's binaries, which a test
  can pause (SIGSTOP) and resume like a stuck process.
- `SystemPostgres`: the machine's own PostgreSQL binaries (an older major
  version, when installed) in a private data directory.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import psycopg2
import psycopg2.extras

from outlast.replication import Lsn
from outlast.testing import EmbeddedPostgres

REPLICATION_SETTINGS: dict[str, object] = {
    "wal_level": "logical",
    "max_wal_size": "32MB",
    "min_wal_size": "32MB",
    "checkpoint_timeout": "1h",
    "max_wal_senders": 20,
    "max_replication_slots": 20,
    "wal_init_zero": False,
    "wal_sender_timeout": "10s",
}
SEGMENT = 16 * 1024 * 1024
WAIT = 30.0


def sql(dsn: str, statement: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement in autocommit mode; the rows it returned."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description is not None else []


def set_keep_size(dsn: str, value: str) -> None:
    """``max_slot_wal_keep_size`` (reloaded, no restart), waiting until sessions see it."""
    sql(dsn, f"ALTER SYSTEM SET max_slot_wal_keep_size = '{value}'")
    sql(dsn, "SELECT pg_reload_conf()")
    want = sql(dsn, "SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'")
    deadline = time.monotonic() + WAIT
    expected = "-1" if value == "-1" else str(int(value.removesuffix("MB")))
    while want[0][0] != expected:
        assert time.monotonic() < deadline, f"max_slot_wal_keep_size did not become {value}"
        time.sleep(0.05)
        want = sql(dsn, "SELECT setting FROM pg_settings WHERE name = 'max_slot_wal_keep_size'")


def switch_wal(dsn: str, steps: int = 1) -> None:
    """Move the WAL position on by `steps` whole segments (a row, then a segment switch)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (id bigserial, at timestamptz)")
        for _ in range(steps):
            conn.execute("INSERT INTO wal_filler (at) VALUES (now())")
            conn.execute("SELECT pg_switch_wal()")


def current_lsn(dsn: str) -> Lsn:
    return Lsn(sql(dsn, "SELECT pg_current_wal_lsn()::text")[0][0])


def slot_row(dsn: str, slot: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT slot_name, active, restart_lsn::text, confirmed_flush_lsn::text, wal_status"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        row = cur.fetchone()
    if row is None:
        return None
    keys = ("slot_name", "active", "restart_lsn", "confirmed_flush_lsn", "wal_status")
    return dict(zip(keys, row, strict=True))


def drop_slots(dsn: str) -> None:
    """Drop every slot (terminating whoever holds one), so WAL can be recycled."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name, pid in conn.execute(
            "SELECT slot_name, active_pid FROM pg_replication_slots"
        ).fetchall():
            if pid is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    break
                except psycopg.errors.ObjectInUse:
                    time.sleep(0.05)
                except psycopg.errors.UndefinedObject:
                    break


def inserted_ids(payloads: list[bytes]) -> list[int]:
    """The ``id`` of every INSERT in test_decoding output."""
    text = b"\n".join(payloads).decode()
    return [int(i) for i in re.findall(r"INSERT: id\[integer\]:(\d+)", text)]


def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Consumer:
    """A psycopg2 logical-replication consumer in a thread (see the module docstring).

    With ``plugin="pgoutput"`` it decodes `publication`; with ``test_decoding``
    it reads text. `stored` is the offset it keeps: the LSN of the last change
    it processed, unless `store` is False (then it still acknowledges, but
    "crashes" before storing: the consumer whose acknowledgements run ahead
    of its offsets). With `ack` False it stores but does not acknowledge (a
    consumer that stopped between the two).
    """

    def __init__(
        self,
        dsn: str,
        slot: str,
        *,
        publication: str | None = None,
        start_lsn: Lsn | None = None,
    ) -> None:
        self.dsn = dsn
        self.slot = slot
        self.publication = publication
        self.start_lsn = start_lsn
        self.changes = 0
        self.payloads: list[bytes] = []
        self.stored: Lsn | None = None
        self.acked: Lsn | None = None
        self.store = True
        self.ack = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Consumer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"consumer:{self.slot}")
        self._thread.start()
        wait_until(
            lambda: bool((slot_row(self.dsn, self.slot) or {}).get("active")),
            f"consumer on {self.slot} to connect",
        )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT)
            assert not self._thread.is_alive(), "consumer thread did not stop"
        if self._error is not None:
            raise AssertionError(f"consumer failed: {self._error!r}")

    def _is_change(self, payload: bytes) -> bool:
        if self.publication is not None:
            return payload[:1] in (b"I", b"U", b"D", b"T")  # pgoutput change messages
        # test_decoding decodes every table, outlast's epoch registry included: count
        # (and acknowledge) the application's changes only.
        return payload.startswith(b"table ") and not payload.startswith(b"table public.outlast_")

    def _run(self) -> None:
        try:
            conn = psycopg2.connect(
                self.dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection
            )
        except BaseException as exc:  # reported by stop()
            self._error = exc
            return
        try:
            cur = conn.cursor()
            options = (
                {"proto_version": "1", "publication_names": self.publication}
                if self.publication is not None
                else None
            )
            cur.start_replication(
                slot_name=self.slot,
                decode=False,
                options=options,
                status_interval=1,
                start_lsn=int(self.start_lsn or 0),
            )
            while not self._stop.is_set():
                msg = cur.read_message()
                if msg is None:
                    select.select([cur], [], [], 0.1)
                    continue
                payload = bytes(msg.payload)
                if self._is_change(payload):
                    with self._lock:
                        self.changes += 1
                        self.payloads.append(payload)
                        if self.store:
                            self.stored = Lsn(msg.data_start)
                        self.acked = Lsn(msg.data_start)
                    if self.ack:
                        cur.send_feedback(flush_lsn=msg.data_start, force=True)
        except BaseException as exc:
            if not self._stop.is_set():
                self._error = exc
        finally:
            conn.close()


class RecvLogical:
    """``pg_recvlogical --start`` as a child process that a test can pause and resume."""

    def __init__(self, server: EmbeddedPostgres, dbname: str, slot: str, out: Path) -> None:
        self.proc = subprocess.Popen(
            [
                str(server.bin_dir / "pg_recvlogical"),
                *("-h", server.host, "-p", str(server.port), "-U", server.user, "-d", dbname),
                *("--slot", slot, "--start", "-f", str(out)),
                *("--status-interval", "1", "--fsync-interval", "1", "--no-loop"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.out = out
        dsn = server.dsn(dbname)
        wait_until(lambda: bool((slot_row(dsn, slot) or {}).get("active")), "pg_recvlogical")

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.resume()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def system_postgres_bin_dirs() -> list[tuple[int, Path]]:
    """``(major, bin dir)`` of the machine's PostgreSQL installations, oldest first."""
    found = []
    for postgres in glob.glob("/usr/lib/postgresql/*/bin/postgres"):
        match = re.search(r"/postgresql/(\d+)/bin/", postgres)
        if match:
            found.append((int(match.group(1)), Path(postgres).parent))
    return sorted(found)


class SystemPostgres(EmbeddedPostgres):
    """An `EmbeddedPostgres` run with the machine's own binaries (`bin_dir`).

    The system's installation is already readable by everyone: unlike the
    wheel's, it is never chmod-ed; only our own data directory is handed
    to the unprivileged server user when we run as root.
    """

    def __init__(self, bin_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bin_dir = bin_dir

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        import pwd

        try:
            entry = pwd.getpwnam("embedded_postgres")
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--shell", "/usr/sbin/nologin", "embedded_postgres"],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam("embedded_postgres")
        self.base_dir.chmod(0o755)
        for parent in self.base_dir.parents:
            mode = parent.stat().st_mode
            if mode & 0o011 != 0o011:
                parent.chmod(mode | 0o055)
        os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        self._run_as = "embedded_postgres"


@contextlib.contextmanager
def private_server(settings: dict[str, object] | None = None, **kwargs: Any) -> Iterator[Any]:
    server = kwargs.pop("server", None) or EmbeddedPostgres(
        settings={**REPLICATION_SETTINGS, **(settings or {})}, **kwargs
    )
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
