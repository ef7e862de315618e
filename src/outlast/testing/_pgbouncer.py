"""A private PgBouncer in front of a test server: what a transaction pooler really does.

`PgBouncer` writes its own ``pgbouncer.ini`` and user list into a temporary
folder, starts Debian's ``pgbouncer`` on a free loopback port in the
foreground, and stops it (and removes the folder) when the ``with`` block
ends. PgBouncer refuses to run as root, so under root it runs as the embedded
server's system user (or ``nobody``). Transaction pooling by default, the
mode in which session state, LISTEN and advisory locks do not work.

``scripts/ensure-pgbouncer`` installs the package on Debian when it runs as
root; `pgbouncer_binary` says whether it is there, so tests can skip with a
reason where it cannot be installed.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from outlast.testing._postgres import PostgresError, free_port

__all__ = ["PASSWORD", "PgBouncer", "pgbouncer_binary"]

PASSWORD = "pgb-s3cret:@#?"
"""The user list's password (odd characters on purpose: nothing may echo it)."""

_START_TIMEOUT = 15.0


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` executable, or None when it is not installed."""
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("embedded_postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise PostgresError("pgbouncer refuses to run as root and no other user exists")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """PgBouncer on ``127.0.0.1:<port>`` in front of `upstream` (``(host, port)``).

    `auth_type` ``"md5"`` checks `password` (``"trust"`` lets anyone in);
    `ignore_startup_parameters` are accepted from clients and dropped (add
    ``"options"`` for the silent case: settings sent at login that never
    apply); `tls` (key and certificate files) offers TLS to clients;
    `settings` adds or overrides ``[pgbouncer]`` keys (``default_pool_size``,
    ``max_client_conn``, ``query_wait_timeout`` ...).
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        pool_mode: str = "transaction",
        auth_type: str = "md5",
        password: str = PASSWORD,
        ignore_startup_parameters: Sequence[str] = ("extra_float_digits",),
        tls: tuple[Path, Path] | None = None,
        settings: Mapping[str, object] | None = None,
    ) -> None:
        self.upstream = upstream
        self.password = password
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outlast-pgbouncer-"))
        self.log_path = self.dir / "pgbouncer.log"
        self.proc: subprocess.Popen[bytes] | None = None
        config: dict[str, object] = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": auth_type,
            "auth_file": self.dir / "userlist.txt",
            "pool_mode": pool_mode,
            "max_client_conn": 300,
            "default_pool_size": 10,
            "server_login_retry": 1,
            "ignore_startup_parameters": ",".join(ignore_startup_parameters),
        }
        if tls is not None:
            config.update(
                client_tls_sslmode="allow", client_tls_key_file=tls[0], client_tls_cert_file=tls[1]
            )
        config.update(settings or {})
        lines = ["[databases]", f"* = host={upstream[0]} port={upstream[1]}", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in config.items()]
        (self.dir / "userlist.txt").write_text(f"{_quote('postgres')} {_quote(password)}\n")
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")

    def start(self) -> PgBouncer:
        """Start it and wait until it listens (`PostgresError` when it cannot)."""
        binary = pgbouncer_binary()
        if binary is None:
            raise PostgresError(
                "pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)"
            )
        self.dir.chmod(0o755)
        for path in self.dir.iterdir():
            path.chmod(0o644)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, str(self.dir / "pgbouncer.ini")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=_run_as(),
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostgresError(f"pgbouncer exited at start-up:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.close()
        raise PostgresError(f"pgbouncer did not listen within {_START_TIMEOUT}s")

    def log(self) -> str:
        """Its log so far (for failure messages)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def dsn(self, dbname: str = "postgres", **params: object) -> str:
        """A libpq key=value DSN through PgBouncer (with its password)."""
        merged: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "user": "postgres",
            "dbname": dbname,
            "password": self.password,
            "connect_timeout": 5,
        }
        merged.update(params)
        return " ".join(
            f"{k}='{str(v).replace(chr(92), chr(92) * 2).replace(chr(39), chr(92) + chr(39))}'"
            for k, v in merged.items()
        )

    def close(self) -> None:
        """Stop it and remove its folder (safe to call twice)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
