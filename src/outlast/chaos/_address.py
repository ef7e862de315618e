"""Parsing ``HOST:PORT`` addresses and picking an event loop implementation."""

from __future__ import annotations

import asyncio

__all__ = ["Address", "new_event_loop", "parse_address"]

Address = tuple[str, int]


def parse_address(value: str | tuple[str, int], *, what: str = "address") -> Address:
    """``"host:port"``, ``"[::1]:port"``, ``":port"`` or ``(host, port)`` -> ``(host, port)``."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{what} must be (host, port), not {value!r}")
        host, port = value
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise ValueError(f"{what} must be (host: str, port: int), not {value!r}")
    elif isinstance(value, str):
        text = value.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"{what} must look like HOST:PORT, not {value!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
        host = host or "127.0.0.1"
    else:
        raise ValueError(f"{what} must be 'HOST:PORT' or (host, port), not {value!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} port must be between 0 and 65535, not {port}")
    if not host:
        raise ValueError(f"{what} has an empty host")
    return host, port


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """An event loop of `kind`: ``"asyncio"``, ``"uvloop"`` or ``"auto"`` (uvloop if installed)."""
    if kind not in ("asyncio", "uvloop", "auto"):
        raise ValueError(f"loop must be 'asyncio', 'uvloop' or 'auto', not {kind!r}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ValueError("loop='uvloop' needs the uvloop package") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()
