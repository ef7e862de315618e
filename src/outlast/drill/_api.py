"""What the drill needs to drive a real API: credentials, write bodies, ids, pages.

- `parse_header`: ``--header 'Authorization: Bearer ...'`` (repeatable).
- `Auth`: a token obtained once before the drill starts, from a command
  (``--token-command``: its standard output) or a login request (``--login
  'POST /api/auth/token/' --login-body '{"username": ..., "password": ...}'``,
  the token found in the JSON answer), sent on every request as
  ``--auth-header`` (default ``Authorization: Bearer {token}``).
- `JsonTemplate`: ``--write-body`` (JSON, or ``@file``) whose strings may hold
  ``{id}``, the drill's unique id of each write; `dig` finds the service's own
  id in a write's answer (``--write-id id``, a dotted path) for the per-id
  reads of ``--read-one 'GET /api/leads/{id}/'``.
- `next_page`: the next page of a list, from a JSON ``next`` (Django REST
  framework), ``links.next`` (JSON:API) or a ``Link: <...>; rel="next"``
  header; only on the service's own origin.

Secrets stay secret: no header value, token, login body or command output
ever reaches an error message, a log line, the JSON results or the report.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

__all__ = [
    "Auth",
    "AuthError",
    "JsonTemplate",
    "dig",
    "next_page",
    "parse_header",
    "read_text_arg",
]

PLACEHOLDER = "{id}"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Where a login answer usually keeps its token (first found wins).
TOKEN_FIELDS = ("token", "access_token", "access", "key", "id_token")


class AuthError(Exception):
    """Credentials could not be obtained (the message never holds a secret)."""


def read_text_arg(value: str, what: str) -> str:
    """A command-line value, or the contents of a file given as ``@path``."""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{what}: cannot read {value[1:]!r} ({exc.strerror})") from None
    return value


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``("Name", "value")``; the error never repeats the value."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):
        raise ValueError("a header is 'Name: value' (the name before the first colon)")
    value = value.strip()
    if "\r" in value or "\n" in value:
        raise ValueError(f"the value of header {name!r} holds a line break")
    return name, value


def dig(body: Any, path: str) -> Any:
    """The value at a dotted `path` (``id``, ``data.id``, ``items.0.id``) or None."""
    value = body
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _render(value: Any, write_id: str) -> Any:
    if isinstance(value, str):
        return value.replace(PLACEHOLDER, write_id)
    if isinstance(value, Mapping):
        return {k: _render(v, write_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, write_id) for v in value]
    return value


def _holds_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return PLACEHOLDER in value
    if isinstance(value, Mapping):
        return any(_holds_placeholder(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_placeholder(v) for v in value)
    return False


@dataclass(frozen=True)
class JsonTemplate:
    """A JSON write body; ``{id}`` inside its strings becomes each write's unique id."""

    template: Any

    @classmethod
    def parse(cls, text: str) -> JsonTemplate:
        try:
            template = json.loads(read_text_arg(text, "--write-body"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--write-body is not JSON ({exc.msg} at {exc.pos})") from None
        if not _holds_placeholder(template):
            raise ValueError(
                "--write-body must hold {id} in one of its strings, so that each write"
                ' can be found afterwards (e.g. {"email": "{id}@example.com"})'
            )
        return cls(template)

    def render(self, write_id: str) -> Any:
        return _render(self.template, write_id)


def next_page(base_url: str, current: str, headers: Mapping[str, str], body: Any) -> str | None:
    """The URL of the next page, or None on the last one.

    Raises `ValueError` for a next link to another origin (the drill only
    talks to the service it drills).
    """
    link: Any = None
    if isinstance(body, Mapping):
        link = body.get("next")
        links = body.get("links")
        if not link and isinstance(links, Mapping):
            link = links.get("next")
    if not link:
        for part in (headers.get("link") or "").split(","):
            if re.search(r';\s*rel="?next"?', part):
                match = re.search(r"<([^>]*)>", part)
                link = match.group(1) if match else None
                break
    if not isinstance(link, str) or not link:
        return None
    absolute = urljoin(urljoin(base_url.rstrip("/") + "/", current), link)
    base, nxt = urlsplit(base_url), urlsplit(absolute)
    if (nxt.scheme, nxt.hostname, nxt.port or _default_port(nxt.scheme)) != (
        base.scheme,
        base.hostname,
        base.port or _default_port(base.scheme),
    ):
        raise ValueError("a next-page link points to another host; the drill does not follow it")
    return absolute


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class Auth:
    """How the drill gets a token before it starts (at most one of the two ways)."""

    token_command: Sequence[str] | None = field(default=None, repr=False)
    login_method: str = "POST"
    login_path: str | None = None
    login_body: Any = field(default=None, repr=False)
    login_token: str | None = None  # dotted path in the answer (default: TOKEN_FIELDS)
    header: str = "Authorization: Bearer {token}"

    def __post_init__(self) -> None:
        if self.token_command is not None and self.login_path is not None:
            raise ValueError("give --token-command or --login, not both")
        name, _, value = self.header.partition(":")
        if "{token}" not in value or not _HEADER_NAME.match(name.strip()):
            raise ValueError("--auth-header is 'Name: ... {token} ...'")

    @property
    def needed(self) -> bool:
        return self.token_command is not None or self.login_path is not None

    @classmethod
    def from_command_line(cls, text: str, **kwargs: Any) -> Auth:
        argv = shlex.split(text)
        if not argv:
            raise ValueError("--token-command is empty")
        return cls(token_command=tuple(argv), **kwargs)

    def header_for(self, token: str) -> tuple[str, str]:
        if not token or any(c in token for c in "\r\n"):
            raise AuthError("the token is empty or holds a line break")
        name, _, value = self.header.partition(":")
        return name.strip(), value.strip().replace("{token}", token)

    def run_command(self, timeout: float = 60.0) -> str:
        """The token printed by the token command (its last non-empty output line)."""
        assert self.token_command is not None
        try:
            done = subprocess.run(
                list(self.token_command),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise AuthError(f"the token command {self.token_command[0]!r} was not found") from None
        except subprocess.TimeoutExpired:
            raise AuthError(f"the token command did not finish in {timeout:g} s") from None
        if done.returncode != 0:
            raise AuthError(f"the token command exited with status {done.returncode}")
        lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
        if not lines:
            raise AuthError("the token command printed nothing")
        return lines[-1]

    def token_from(self, status: int, body: Any) -> str:
        """The token in a login answer."""
        if not 200 <= status < 300:
            raise AuthError(f"the login request answered {status}")
        paths = (self.login_token,) if self.login_token else TOKEN_FIELDS
        for path in paths:
            value = dig(body, path)
            if isinstance(value, str) and value:
                return value
        where = self.login_token or " / ".join(TOKEN_FIELDS)
        raise AuthError(f"the login answer holds no token at {where!r} (use --login-token)")
