"""A PostgreSQL server the test suite does not own (``OUTLAST_TEST_DSN``).

Only non-destructive use: the suite creates and drops its own databases on it,
never stops or reconfigures it. Statements go through the embedded wheel's
``psql`` so this module needs no database driver.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import quote

from outlast._core.connections.dsn import make_dsn, parse_dsn
from outlast.testing._postgres import PostgresError, _bin_dir, _ident

__all__ = ["ExternalPostgres"]


class ExternalPostgres:
    """Addressing helpers with the same shape as `EmbeddedPostgres`'s."""

    def __init__(self, dsn: str) -> None:
        self._params = parse_dsn(dsn)  # ValueError naming the problem, never the password
        self.host = self._params.get("host", "127.0.0.1")
        self.port = int(self._params.get("port", "5432"))
        self.user = self._params.get("user", "postgres")
        self.password = self._params.get("password")
        self.bin_dir: Path = _bin_dir()

    def dsn(self, dbname: str | None = None, **params: object) -> str:
        merged: dict[str, object] = {**self._params}
        if dbname is not None:
            merged["dbname"] = dbname
        merged.update(params)
        return make_dsn(merged)

    def url(self, dbname: str | None = None, driver: str | None = "psycopg") -> str:
        scheme = "postgresql" if not driver else f"postgresql+{driver}"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        name = dbname or self._params.get("dbname", "postgres")
        return f"{scheme}://{auth}@{self.host}:{self.port}/{quote(name)}"

    def psql(self, sql: str, *, dbname: str | None = None, timeout: float = 60.0) -> str:
        # The password travels in the environment, not on a command line that
        # every user of the machine can read in the process list.
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
                *("-d", self.dsn(dbname, password=None), "-c", sql),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise PostgresError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str, *, template: str | None = None) -> None:
        tpl = f" TEMPLATE {_ident(template)}" if template else ""
        self.psql(f"CREATE DATABASE {_ident(name)}{tpl}")

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")
