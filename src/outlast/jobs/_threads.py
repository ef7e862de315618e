"""A fixed set of daemon threads for sync handlers.

Why not `asyncio.to_thread`: the default executor's threads are joined at
interpreter exit, so one handler stuck in a network call would keep a worker
that was asked to stop alive forever. Here the threads are daemons: once a
graceful shutdown has waited its `shutdown_timeout` and released the jobs
still running, the process can exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HandlerThreads"]

_Item = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop] | None


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the awaiting task was cancelled (shutdown): nobody wants the result
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class HandlerThreads:
    """Run sync callables on `size` daemon threads; await their results."""

    def __init__(self, size: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, fut, loop = item
            try:
                value: Any = fn()
                ok = True
            except BaseException as exc:
                value, ok = exc, False
            try:
                loop.call_soon_threadsafe(_resolve, fut, ok, value)
            except RuntimeError:  # the loop is closed: the worker is gone
                pass
            del item, fn, fut, value

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn(*args)`` on a thread (in a copy of this context) and await its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()
        self._queue.put((lambda: ctx.run(fn, *args), fut, loop))
        return await fut

    def close(self) -> None:
        """Let every idle thread exit (busy ones finish their call first; they are daemons)."""
        for _ in self._threads:
            self._queue.put(None)
