"""A real PgBouncer (Debian's ``pgbouncer``) in front of the embedded server, and TLS files.

`PgBouncer` writes a private ``pgbouncer.ini`` and user list into a temporary
folder, starts ``pgbouncer`` on a free loopback port in the foreground and
stops it on `close()`. PgBouncer refuses to run as root, so under root it runs
as the embedded server's system user. With ``tls=`` it also offers TLS to its
clients (``client_tls_sslmode = allow``): a real TLS handshake with a real
certificate, which the embedded server (built without OpenSSL) cannot offer.

`self_signed_certificate` makes a throwaway key and certificate with the
``openssl`` command. ``scripts/ensure-pgbouncer`` installs PgBouncer on Debian
when it runs as root; elsewhere the tests that need it skip and say why.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from outlast.testing._postgres import free_port

PASSWORD = "pgb-s3cret:@#?"
"""The user list's password (odd characters on purpose: nothing may echo it)."""

_START_TIMEOUT = 15.0


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )


def require_pgbouncer() -> str:
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    return binary


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("embedded_postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.skip("pgbouncer refuses to run as root and no other user exists")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """PgBouncer on 127.0.0.1:`port` in front of `upstream` (``host, port``)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        auth_type: str = "md5",
        password: str = PASSWORD,
        tls: tuple[Path, Path] | None = None,
        settings: dict[str, object] | None = None,
    ) -> None:
        binary = require_pgbouncer()
        self.dir = Path(tempfile.mkdtemp(prefix="outlast-pgbouncer-"))
        self.port = free_port()
        self.password = password
        lines = [
            "[databases]",
            f"* = host={upstream[0]} port={upstream[1]}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            "unix_socket_dir =",
            f"auth_type = {auth_type}",
            f"auth_file = {self.dir / 'userlist.txt'}",
            "pool_mode = transaction",
            "server_login_retry = 1",
        ]
        if tls is not None:
            key, cert = tls
            lines += [
                "client_tls_sslmode = allow",
                f"client_tls_key_file = {key}",
                f"client_tls_cert_file = {cert}",
            ]
        lines += [f"{key} = {value}" for key, value in (settings or {}).items()]
        (self.dir / "userlist.txt").write_text(f"{_quote('postgres')} {_quote(password)}\n")
        (self.dir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        self.dir.chmod(0o755)
        for path in self.dir.iterdir():
            path.chmod(0o644)
        self.log_path = self.dir / "pgbouncer.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=_run_as(),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start-up:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"pgbouncer did not listen within {_START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def self_signed_certificate(common_name: str) -> Iterator[tuple[Path, Path]]:
    """A throwaway RSA key and certificate for `common_name` (``openssl req -x509``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    folder = Path(tempfile.mkdtemp(prefix="outlast-tls-"))
    key, cert = folder / "server.key", folder / "server.crt"
    try:
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        folder.chmod(0o755)
        key.chmod(0o644)  # read by PgBouncer's user; a throwaway test key
        cert.chmod(0o644)
        yield key, cert
    finally:
        shutil.rmtree(folder, ignore_errors=True)
