"""What each connection asked for at login: the StartupMessage parameters.

A test can check what a driver or a pool really sends (``user``, ``database``,
``application_name``, ``options``, ...), e.g. that a pooler preset sends no
startup ``options``. Only the StartupMessage is read: a PasswordMessage (or any
later message) never is. Passwords do not travel in a StartupMessage, but a
client can put a secret there all the same, and not only under a name that
says so: ``options`` carries ``-c name=value`` settings (``-c password=...``,
``-c app.api_token=...``), and any value can hold a nested connection string
(``primary_conninfo=host=db\\ password=...``) or a URL with a password. So
every value is searched (this package imports nothing of outlast, so it has
its own small masker):

- a parameter whose name says secret is masked whole;
- in every other value, the value of each ``name=value`` pair whose name says
  secret, up to the next whitespace that no backslash escapes (how the server
  splits ``options``), or a quoted value;
- the password of a ``scheme://user:password@`` URL, up to the last ``@`` of
  its whitespace-free stretch (a URL password with raw whitespace in a login
  parameter is not recognised: percent-encode it).

A name "says secret" when it contains ``password``, ``passwd``, ``pwd``,
``secret``, ``token`` or ``credential``, or ends in ``key`` (``scram_client_key``,
``api_key``; a file path under ``sslkey`` is masked too, harmlessly).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = ["LoginLog", "login_parameters", "mask_value"]

MASK = "[redacted]"

_SECRET_WORDS = ("password", "passwd", "pwd", "secret", "token", "credential")
# A setting's (dotted) name and its "=", anywhere in a value ("-c name=v",
# "--name=v", "conninfo=host=h\\ password=v"); then the value: a quoted start
# (conninfo's 'a b', backslash escapes) and whatever follows it up to the first
# whitespace no backslash escapes. The server reads `-c password=""x` as the
# literal `""x`, so stopping after `""` would show the rest; a quote later in a
# value is an ordinary character there.
_NAME_RE = re.compile(r"(?<![\w.])(?P<name>[A-Za-z_][\w.\-]*)\s*=\s*")
_VALUE_RE = re.compile(r"""(?:'(?:\\.|[^'\\])*'?|"(?:\\.|[^"\\])*"?)?(?:\\.|[^\s\\])*\\?""", re.S)
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]]*:(?P<pw>\S*)@")


def _says_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered.endswith("key") or any(word in lowered for word in _SECRET_WORDS)


def mask_value(value: str) -> str:
    """`value` with the secrets it holds masked (see the module's docstring)."""
    parts: list[str] = []
    done = search = 0
    while (pair := _NAME_RE.search(value, search)) is not None:
        search = pair.end()  # a value that is not secret is searched too (nested pairs)
        if not _says_secret(pair["name"]):
            continue
        secret = _VALUE_RE.match(value, pair.end())
        parts += [value[done : pair.end()], MASK]
        done = search = secret.end() if secret is not None else pair.end()
    parts.append(value[done:])
    masked = "".join(parts)
    return _URL_RE.sub(lambda m: f"{m.group(0)[: m.start('pw') - m.start()]}{MASK}@", masked)


def login_parameters(parameters: Mapping[str, str]) -> dict[str, str]:
    """A copy of StartupMessage `parameters` with every secret in them masked."""
    return {
        key: MASK if _says_secret(key) else mask_value(value) for key, value in parameters.items()
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
