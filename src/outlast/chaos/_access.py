"""Who may drive the admin API: a local tool, not an open door.

The admin API can cut every connection through the proxies and open new
listeners, so a web page the developer happens to visit must not be able to
drive it. A page can send requests to ``http://127.0.0.1:8474`` without asking
anyone: a "simple" cross-origin request (``POST`` with ``Content-Type:
text/plain`` and a JSON body) needs no CORS preflight, and DNS rebinding lets a
page on ``evil.example`` talk to the loopback address under its own name and
read the answers. Each request must pass, in this order:

1. ``Host`` names the admin API itself: an IP address, ``localhost``, or a name
   given in ``allowed_hosts`` -- never a DNS name an attacker controls
   (rebinding). 403 otherwise.
2. No browser context from elsewhere: an ``Origin`` header, if present, must be
   the admin API's own origin (``http://`` + its ``Host``), and
   ``Sec-Fetch-Site``, if present, ``same-origin`` or ``none``. 403 otherwise.
3. ``Authorization: Bearer <token>``, compared in constant time. 401 otherwise.
4. A ``POST`` (and any request with a body) says ``Content-Type:
   application/json``, which a browser cannot send cross-origin without a
   preflight (which step 2 refuses). 415 otherwise.

No response carries CORS headers, so a browser never lets a page read one.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Mapping

__all__ = ["Refused", "check_request", "check_token", "host_name", "new_token"]

_JSON = "application/json"
_SAME_SITE = frozenset({"same-origin", "none"})


class Refused(Exception):
    """A request the admin API turns away: its HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def new_token() -> str:
    """A fresh random token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def check_token(token: str) -> str:
    """`token` if it can travel in an HTTP header; `ValueError` otherwise."""
    if not isinstance(token, str) or not token:
        raise ValueError("the admin token must be a non-empty string")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError("the admin token must be printable ASCII without spaces")
    return token


def host_name(host_header: str) -> str | None:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``)."""
    value = host_header.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not value[end + 1 :].startswith(":")):
            return None
        return value[1:end]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _own_host(name: str | None, allowed: Iterable[str]) -> bool:
    if name is None:
        return False
    lowered = name.lower().rstrip(".")
    return _is_ip(lowered) or lowered == "localhost" or lowered in allowed


def check_request(
    method: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    token: str,
    allowed_hosts: frozenset[str],
) -> None:
    """Raise `Refused` unless the request passes every step of the module's rules."""
    host = headers.get("host")
    if host is None:
        raise Refused(400, "missing Host header")
    if not _own_host(host_name(host), allowed_hosts):
        raise Refused(
            403,
            f"Host {host[:100]!r} is not this admin API (it answers to IP addresses and "
            "localhost; add a name with --admin-host / AdminServer(allowed_hosts=...))",
        )
    origin = headers.get("origin")
    if origin is not None and origin.rstrip("/").lower() != f"http://{host}".lower():
        raise Refused(403, "cross-origin request refused")
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in _SAME_SITE:
        raise Refused(403, "cross-site request refused")
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), token.encode()
    ):
        raise Refused(401, "missing or wrong token (send 'Authorization: Bearer <token>')")
    if method == "POST" or body:
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != _JSON:
            raise Refused(415, "the body must be JSON (Content-Type: application/json)")
