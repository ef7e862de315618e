"""`AdminClient`: a small synchronous client for the admin HTTP API (urllib only)."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

__all__ = ["AdminClient", "AdminError"]


class AdminError(RuntimeError):
    """The admin API answered with an error (``status`` is the HTTP status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class AdminClient:
    """Talks to ``outlast proxy --admin`` (or an `AdminServer`) at `url`.

    ::

        admin = AdminClient("http://127.0.0.1:8474")
        with admin.fault("postgres", "reject_login", preset="too_many_connections"):
            ...
    """

    def __init__(self, url: str = "http://127.0.0.1:8474", *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", "replace") or exc.reason
            raise AdminError(exc.code, str(message)) from None
        return json.loads(raw) if raw else None

    @staticmethod
    def _name(name: str) -> str:
        return quote(name, safe="")

    def proxies(self) -> dict[str, Any]:
        """Every proxy with its counters and active faults, by name."""
        result: dict[str, Any] = self._request("GET", "/proxies")
        return result

    def proxy(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/proxies/{self._name(name)}")
        return result

    def create_proxy(self, name: str, listen: str, upstream: str) -> dict[str, Any]:
        body = {"name": name, "listen": listen, "upstream": upstream}
        result: dict[str, Any] = self._request("POST", "/proxies", body)
        return result

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{self._name(name)}")

    def faults(self, proxy: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._request("GET", f"/proxies/{self._name(proxy)}/faults")
        return result

    def add_fault(
        self,
        proxy: str,
        kind: str,
        duration: float | None = None,
        toxicity: float = 1.0,
        **params: Any,
    ) -> str:
        """Start a fault on `proxy`; returns its id."""
        body = {"type": kind, "duration": duration, "toxicity": toxicity, "params": params}
        result = self._request("POST", f"/proxies/{self._name(proxy)}/faults", body)
        return str(result["id"])

    def fault_info(self, proxy: str, fault_id: str) -> dict[str, Any]:
        """One fault (active or recently ended) with ``hits``: what it acted on so far."""
        path = f"/proxies/{self._name(proxy)}/faults/{self._name(fault_id)}"
        result: dict[str, Any] = self._request("GET", path)
        return result

    def remove_fault(self, proxy: str, fault_id: str) -> None:
        self._request("DELETE", f"/proxies/{self._name(proxy)}/faults/{self._name(fault_id)}")

    def clear(self, proxy: str) -> None:
        """Remove every fault of one proxy."""
        self._request("DELETE", f"/proxies/{self._name(proxy)}/faults")

    def logins(self, proxy: str) -> list[dict[str, Any]]:
        """The recent logins of `proxy` (StartupMessage parameters), oldest first."""
        result: list[dict[str, Any]] = self._request("GET", f"/proxies/{self._name(proxy)}/logins")
        return result

    def clear_logins(self, proxy: str) -> None:
        self._request("DELETE", f"/proxies/{self._name(proxy)}/logins")

    def reset(self) -> None:
        """Remove every fault of every proxy."""
        self._request("POST", "/reset")

    @contextlib.contextmanager
    def fault(
        self,
        proxy: str,
        kind: str,
        duration: float | None = None,
        toxicity: float = 1.0,
        **params: Any,
    ) -> Iterator[str]:
        """Apply a fault for the duration of a ``with`` block."""
        fault_id = self.add_fault(proxy, kind, duration=duration, toxicity=toxicity, **params)
        try:
            yield fault_id
        finally:
            with contextlib.suppress(AdminError):  # it may have expired already
                self.remove_fault(proxy, fault_id)
