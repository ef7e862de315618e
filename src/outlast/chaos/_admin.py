"""The admin HTTP API (Toxiproxy-like JSON) over a minimal HTTP/1.1 server.

Routes::

    GET    /                               {"service": "outlast.chaos", "proxies": [...]}
    GET    /proxies                        {name: stats, ...}
    POST   /proxies                        {"name", "listen", "upstream"} -> 201 stats
    GET    /proxies/{name}                 stats (with "links" and "logins")
    DELETE /proxies/{name}                 stop and forget the proxy -> 204
    GET    /proxies/{name}/faults          [fault, ...]
    POST   /proxies/{name}/faults          {"type", "duration"?, "toxicity"?, "params"?} -> 201
    DELETE /proxies/{name}/faults          remove all its faults -> 204
    GET    /proxies/{name}/faults/{id}     one fault, also recently ended: "hits", "active"
    DELETE /proxies/{name}/faults/{id}     remove one fault -> 204
    GET    /proxies/{name}/logins          [login, ...] (recent StartupMessage parameters)
    DELETE /proxies/{name}/logins          forget them -> 204
    POST   /reset                          remove every fault of every proxy -> 204

Errors are JSON ``{"error": "...", "status": 4xx}``. One request per
connection (``Connection: close``); bodies are JSON, at most 64 KiB.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import json
import logging
import threading
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from outlast.chaos._address import Address, parse_address
from outlast.chaos._proxy import Proxy

__all__ = ["AdminServer"]

logger = logging.getLogger("outlast.chaos")
_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024
_REQUEST_TIMEOUT = 10.0


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminServer:
    """Serves the admin API for a set of proxies, on its own event-loop thread.

    Binds to loopback only unless `allow_remote` is true: the API can cut any
    connection going through the proxies, so it must not face a network by accident.
    """

    def __init__(
        self,
        proxies: Iterable[Proxy] = (),
        listen: str | Address = ("127.0.0.1", 8474),
        *,
        allow_remote: bool = False,
    ) -> None:
        self.listen_address = parse_address(listen, what="admin")
        if not allow_remote and not _is_loopback(self.listen_address[0]):
            raise ValueError(
                f"admin address {self.listen_address[0]} is not loopback; "
                "pass allow_remote=True to expose the admin API"
            )
        self._proxies: dict[str, Proxy] = {}
        self._owned: set[str] = set()
        for proxy in proxies:
            self.add(proxy)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._address: Address | None = None
        self._stop: asyncio.Event | None = None

    def add(self, proxy: Proxy) -> None:
        if proxy.name in self._proxies:
            raise ValueError(f"a proxy named {proxy.name!r} is already registered")
        self._proxies[proxy.name] = proxy

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the admin server is not running")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    # ----------------------------------------------------------- lifecycle

    def start(self) -> AdminServer:
        if self._thread is not None:
            raise RuntimeError("the admin server is already running")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="outlast-chaos-admin", daemon=True
        )
        self._thread.start()
        try:
            ready.result()
        except BaseException:
            self._thread.join()
            self._thread = None
            raise
        return self

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            host, port = self.listen_address
            self._server = await asyncio.start_server(self._handle, host, port, limit=_MAX_HEAD)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        sockname = self._server.sockets[0].getsockname()
        self._address = (sockname[0], sockname[1])
        ready.set_result(None)
        async with self._server:
            await self._stop.wait()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stop serving; proxies created through the API are stopped too."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = None
        self._address = None
        for name in list(self._owned):
            self._proxies.pop(name).stop()
        self._owned.clear()

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------- HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, body = await asyncio.wait_for(
                    self._read_request(reader), _REQUEST_TIMEOUT
                )
                status, payload = await self._dispatch(method, path, body)
            except HTTPError as exc:
                status, payload = exc.status, {"error": exc.message, "status": exc.status}
            except TimeoutError:
                status, payload = 408, {"error": "request timed out", "status": 408}
            except Exception:
                logger.exception("admin API request failed")
                status, payload = 500, {"error": "internal error", "status": 500}
            writer.write(_response(status, payload))
            await asyncio.wait_for(writer.drain(), _REQUEST_TIMEOUT)
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HTTPError(431, "request head too large") from None
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "incomplete request") from None
        try:
            text = head.decode("ascii")
        except UnicodeDecodeError:
            raise HTTPError(400, "request head is not ASCII") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[0].isalpha():
            raise HTTPError(400, "malformed request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HTTPError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            raise HTTPError(501, "Transfer-Encoding is not supported; send Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isdigit():
            raise HTTPError(400, "bad Content-Length")
        length = int(length_text)
        if length > _MAX_BODY:
            raise HTTPError(413, f"body larger than {_MAX_BODY} bytes")
        try:
            body = await reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise HTTPError(400, "body shorter than Content-Length") from None
        path = unquote(urlsplit(target).path)
        return method.upper(), path, body

    # ----------------------------------------------------------- routes

    async def _dispatch(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        if not parts and method == "GET":
            return 200, {"service": "outlast.chaos", "proxies": sorted(self._proxies)}
        if parts == ["reset"]:
            _allow(method, "POST")
            for each in list(self._proxies.values()):
                await self._blocking(each.clear)
            return 204, None
        if not parts or parts[0] != "proxies" or len(parts) > 4:
            raise HTTPError(404, f"no route for {path!r}")
        if len(parts) == 1:
            _allow(method, "GET", "POST")
            if method == "GET":
                return 200, {
                    name: await self._blocking(p.stats) for name, p in self._proxies.items()
                }
            return 201, await self._create(_json_object(body))
        proxy = self._proxies.get(parts[1])
        if proxy is None:
            raise HTTPError(404, f"no proxy named {parts[1]!r}")
        if len(parts) == 2:
            _allow(method, "GET", "DELETE")
            if method == "GET":
                return 200, await self._blocking(lambda: proxy.stats(connections=True))
            self._proxies.pop(proxy.name, None)
            self._owned.discard(proxy.name)
            await self._blocking(proxy.stop)
            return 204, None
        if parts[2] == "logins" and len(parts) == 3:
            _allow(method, "GET", "DELETE")
            if method == "GET":
                return 200, await self._blocking(proxy.logins)
            await self._blocking(proxy.clear_logins)
            return 204, None
        if parts[2] != "faults":
            raise HTTPError(404, f"no route for {path!r}")
        if len(parts) == 3:
            _allow(method, "GET", "POST", "DELETE")
            if method == "GET":
                return 200, await self._blocking(proxy.faults)
            if method == "DELETE":
                await self._blocking(proxy.clear)
                return 204, None
            return 201, await self._add_fault(proxy, _json_object(body))
        _allow(method, "GET", "DELETE")
        if method == "GET":
            try:
                return 200, await self._blocking(lambda: proxy.fault_info(parts[3]))
            except KeyError:
                raise HTTPError(404, f"no fault {parts[3]!r} on {proxy.name}") from None
        try:
            await self._blocking(lambda: proxy.remove_fault(parts[3]))
        except KeyError:
            raise HTTPError(404, f"no active fault {parts[3]!r} on {proxy.name}") from None
        return 204, None

    async def _blocking(self, fn: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn)
        except RuntimeError as exc:  # the proxy was stopped meanwhile
            raise HTTPError(409, str(exc)) from None

    async def _add_fault(self, proxy: Proxy, data: dict[str, Any]) -> Any:
        unknown = sorted(set(data) - {"type", "duration", "toxicity", "params", "attributes"})
        if unknown:
            raise HTTPError(400, f"unknown field {unknown[0]!r}")
        if "type" not in data:
            raise HTTPError(400, "missing field 'type'")
        params = data.get("params", data.get("attributes", {}))
        if not isinstance(params, dict):
            raise HTTPError(400, "'params' must be an object")
        try:
            fault_id = await self._blocking(
                lambda: proxy.add_fault_from(
                    data["type"],
                    duration=data.get("duration"),
                    toxicity=data.get("toxicity", 1.0),
                    params=params,
                )
            )
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        for fault in await self._blocking(proxy.faults):
            if fault["id"] == fault_id:
                return fault
        return {"id": fault_id, "type": data["type"]}  # already expired

    async def _create(self, data: dict[str, Any]) -> Any:
        unknown = sorted(set(data) - {"name", "listen", "upstream"})
        if unknown:
            raise HTTPError(400, f"unknown field {unknown[0]!r}")
        name = data.get("name")
        if not isinstance(name, str) or not name or "/" in name or len(name) > 100:
            raise HTTPError(400, "'name' must be a non-empty string without '/'")
        if name in self._proxies:
            raise HTTPError(409, f"a proxy named {name!r} already exists")
        try:
            proxy = Proxy(data.get("listen", "127.0.0.1:0"), data.get("upstream", ""), name=name)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, str(exc)) from None
        try:
            await asyncio.get_running_loop().run_in_executor(None, proxy.start)
        except OSError as exc:
            raise HTTPError(409, f"cannot listen on {data.get('listen')}: {exc.strerror}") from None
        self._proxies[name] = proxy
        self._owned.add(name)
        return await self._blocking(proxy.stats)


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise HTTPError(405, f"method {method} not allowed here (allowed: {', '.join(allowed)})")


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HTTPError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "body must be a JSON object")
    return data


def _response(status: int, payload: Any) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    body = b"" if payload is None else json.dumps(payload).encode() + b"\n"
    head = f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode("ascii") + body
