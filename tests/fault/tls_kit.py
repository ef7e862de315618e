"""A throwaway TLS key and certificate (``openssl req -x509``) for PgBouncer's TLS tests.

The embedded server is built without OpenSSL, so a real TLS handshake in the
tests is PgBouncer's (``outlast.testing.PgBouncer(tls=...)``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


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
