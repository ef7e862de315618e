"""``METHOD /path``: how the drill names a route (standard library only)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Route"]


@dataclass(frozen=True)
class Route:
    """``METHOD /path`` (the method defaults to GET)."""

    method: str
    path: str

    @classmethod
    def parse(cls, text: str) -> Route:
        parts = text.strip().split()
        if len(parts) == 1:
            method, path = "GET", parts[0]
        elif len(parts) == 2:
            method, path = parts[0].upper(), parts[1]
        else:
            raise ValueError(f"a route is 'METHOD /path', not {text!r}")
        if not path.startswith("/"):
            raise ValueError(f"a route's path starts with '/', not {path!r}")
        if method not in {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"}:
            raise ValueError(f"unknown HTTP method {method!r} in {text!r}")
        return cls(method, path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"
