"""What each connection asked for at login: the StartupMessage parameters.

A test can check what a driver or a pool really sends (``user``, ``database``,
``application_name``, ``options``, ...), e.g. that a pooler preset sends no
startup ``options``. Only the StartupMessage is read: a PasswordMessage (or any
later message) never is. Passwords do not travel in a StartupMessage, but a
parameter whose name says password is masked all the same, in case a client
puts one there.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["LoginLog", "login_parameters"]

MASK = "[redacted]"


def login_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """A copy of StartupMessage `parameters` with password-like values masked."""
    return {
        key: MASK if "password" in key.lower() or "passwd" in key.lower() else value
        for key, value in parameters.items()
    }


class LoginLog:
    """The most recent logins of one proxy, oldest first, at most `keep` of them."""

    def __init__(self, keep: int) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep_logins must be a whole number >= 0, not {keep!r}")
        self._entries: deque[dict[str, Any]] = deque(maxlen=keep)

    def record(
        self,
        connection: int,
        client: str | None,
        parameters: Mapping[str, str],
        rejected: str | None,
    ) -> None:
        """One StartupMessage; `rejected` is the SQLSTATE when ``reject_login`` answered it."""
        self._entries.append(
            {
                "connection": connection,
                "client": client,
                "at": time.time(),
                "parameters": dict(parameters),
                "rejected": rejected,
            }
        )

    def entries(self) -> list[dict[str, Any]]:
        return [{**entry, "parameters": dict(entry["parameters"])} for entry in self._entries]

    def clear(self) -> None:
        self._entries.clear()
