"""Who holds the migration lock: named in waiting logs and in `MigrationTimeout`.

A wait that ends without saying who is in the way sends an operator to
``pg_locks`` by hand; this says it: the holder's backend pid, its
``application_name`` (outlast leaders call themselves ``outlast-migrate leader
<host>:<pid>:<tag> @<epoch>``), its client address and since when it holds the lock.
"""

from __future__ import annotations

import re
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Holder", "holder_id", "leader_name", "short_host"]

_LEADER_SINCE = re.compile(r" @(\d{9,11})$")
_MAX_NAME = 63  # PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name


def short_host() -> str:
    """This machine's host name, cut to fit an ``application_name`` (containers: the id)."""
    return (socket.gethostname() or "host").split(".", 1)[0][:15]


def holder_id(pid: int) -> str:
    """``<host>:<pid>:<4 hex>``: how this process names itself to the others.

    The random part tells apart two containers that share a host name and a
    pid (``network_mode: host``, pid 1 in both).
    """
    return f"{short_host()}:{pid}:{secrets.token_hex(2)}"


def leader_name(holder: str, since: float) -> str:
    """The ``application_name`` a leader's lock session takes once it holds the lock."""
    return f"outlast-migrate leader {holder} @{int(since)}"[:_MAX_NAME]


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Holder:
    """The session holding the migration lock, as far as this role may see it.

    Columns a role may not read in ``pg_stat_activity`` (another role's client
    address without ``pg_read_all_stats``) are None. `since` is when it took
    the lock when that is known (outlast leaders, lease rows), else when its
    session started (`connected`).
    """

    pid: int | None
    application_name: str | None = None
    client: str | None = None
    since: datetime | None = None
    connected: datetime | None = None
    lease_expires: datetime | None = None

    @classmethod
    def from_row(
        cls,
        pid: int | None,
        application_name: str | None,
        client_addr: str | None,
        client_port: int | None,
        connected: datetime | None,
        *,
        since: datetime | None = None,
        lease_expires: datetime | None = None,
    ) -> Holder:
        """Build a holder from ``pg_stat_activity`` columns (the leader's ``@epoch`` wins)."""
        client = None
        if client_addr:
            client = (
                f"{client_addr}:{client_port}" if client_port and client_port > 0 else client_addr
            )
        if since is None and application_name:
            match = _LEADER_SINCE.search(application_name)
            if match:
                since = datetime.fromtimestamp(int(match.group(1)), tz=UTC)
        return cls(
            pid=pid,
            application_name=application_name,
            client=client,
            since=since or connected,
            connected=connected,
            lease_expires=lease_expires,
        )

    def describe(self) -> str:
        """``pid=4242 app="outlast-migrate leader api-1:7 @..." client=10.0.0.5:5341 since=..``."""
        parts = [f"pid={self.pid if self.pid is not None else '?'}"]
        if self.application_name:
            parts.append(f'app="{self.application_name}"')
        if self.client:
            parts.append(f"client={self.client}")
        since = _iso(self.since)
        if since:
            parts.append(f"since={since}")
        expires = _iso(self.lease_expires)
        if expires:
            parts.append(f"lease_expires={expires}")
        return " ".join(parts)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form (logs' ``extra``, the CLI's ``--json``)."""
        return {
            "pid": self.pid,
            "application_name": self.application_name,
            "client": self.client,
            "since": _iso(self.since),
            "connected": _iso(self.connected),
            "lease_expires": _iso(self.lease_expires),
        }
