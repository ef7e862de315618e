"""A private PgBouncer (Debian's ``pgbouncer`` package) on a free loopback port.

``scripts/ensure-pgbouncer`` installs the package when it is missing and the
tests run as root; without it the PgBouncer tests skip with that reason.
PgBouncer refuses to run as root, so as root it runs as the embedded
server's system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from outlast.testing._postgres import free_port

_RUN_AS = "embedded_postgres"  # the user outlast.testing runs PostgreSQL as, when root


def pgbouncer_binary() -> str | None:
    """The pgbouncer executable, or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def require_pgbouncer() -> str:
    """The executable, or skip the test saying how to get it."""
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    return binary


class PgBouncer:
    """``pool_mode`` in front of ``host:port``; ``ignore_options`` accepts and drops ``options``.

    Many deployments list ``options`` in ``ignore_startup_parameters`` so that
    clients sending it can log in at all; the settings then silently do not
    apply, which is the harder case to detect.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pool_mode: str = "transaction",
        ignore_options: bool = False,
        pool_size: int = 10,
    ) -> None:
        self.binary = require_pgbouncer()
        self.upstream = (host, port)
        self.pool_mode = pool_mode
        self.ignore_options = ignore_options
        self.pool_size = pool_size
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="outlast-pgbouncer-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str, **params: str) -> str:
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}{extra}"

    def start(self) -> PgBouncer:
        ignored = "extra_float_digits,options" if self.ignore_options else "extra_float_digits"
        ini = self.dir / "pgbouncer.ini"
        (self.dir / "users.txt").write_text('"postgres" ""\n')
        ini.write_text(
            "[databases]\n"
            f"* = host={self.upstream[0]} port={self.upstream[1]}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            f"pool_mode = {self.pool_mode}\n"
            "max_client_conn = 300\n"
            f"default_pool_size = {self.pool_size}\n"
            f"ignore_startup_parameters = {ignored}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            "pidfile =\n"
        )
        argv = [self.binary]
        if os.geteuid() == 0:
            entry = pwd.getpwnam(_RUN_AS)  # created by the embedded server's start
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv += ["-u", _RUN_AS]
        argv.append(str(ini))
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within 15 s:\n{self.log()}")

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
