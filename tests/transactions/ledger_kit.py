"""A Jepsen-style write ledger for Guard.transaction through the chaos proxy.

`FaultyAdapter` wraps a real driver adapter and, per transaction, picks (with a
seeded RNG) where to break it, using the proxy's own faults:

- ``before``: the connection is closed just before fn's INSERT;
- ``middle``: the connection is closed after the INSERT, before COMMIT;
- ``commit_lost``: the proxy truncates the COMMIT message (``limit_data``),
  so the server never commits: the outcome must resolve as *aborted*;
- and, independently, a proxy-wide ``cut_after`` COMMIT fault with a
  toxicity drops the server's *reply* to COMMIT on a share of connections:
  the outcome must resolve as *committed*.

The ledger records ok / unknown / failed per id outside the database; the
check reads the table back (with no UNIQUE constraint, so a double write would
be visible) and compares.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from outlast._transaction import StatusReply

CUT_COMMIT = r"^\s*COMMIT"
FAULT_MIX = {"before": 0.04, "middle": 0.04, "commit_lost": 0.04}
COMMIT_CUT_TOXICITY = 0.15


@dataclass
class Ledger:
    outcome: dict[int, str] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)

    def counts(self) -> Counter[str]:
        return Counter(self.outcome.values())


class _Plan:
    def __init__(self, proxy: Any, rng: random.Random, ledger: Ledger) -> None:
        self.proxy = proxy
        self.rng = rng
        self.ledger = ledger
        self.fault: str | None = None

    def choose(self) -> None:
        roll = self.rng.random()
        self.fault = None
        for name, share in FAULT_MIX.items():
            if roll < share:
                self.fault = name
                self.ledger.injected[name] += 1
                return
            roll -= share

    def take(self, name: str) -> bool:
        if self.fault == name:
            self.fault = None  # each injected fault strikes once
            return True
        return False


class FaultyAdapter(_Plan):
    """A sync adapter wrapper that breaks transactions on purpose."""

    def __init__(self, inner: Any, proxy: Any, rng: random.Random, ledger: Ledger) -> None:
        super().__init__(proxy, rng, ledger)
        self.inner = inner

    def open(self) -> Any:
        return self.inner.open()

    def begin(self, handle: Any) -> Any:
        target = self.inner.begin(handle)
        if self.take("before"):
            self.proxy.close_connections()
        return target

    def marker(self, handle: Any) -> tuple[str | None, str | None]:
        if self.take("middle"):
            self.proxy.close_connections()
        return self.inner.marker(handle)  # type: ignore[no-any-return]

    def commit(self, handle: Any) -> None:
        if not self.take("commit_lost"):
            self.inner.commit(handle)
            return
        fault = self.proxy.add_fault("limit_data", bytes=3, direction="upstream")
        try:
            self.inner.commit(handle)
        finally:
            self.proxy.remove_fault(fault)

    def rollback(self, handle: Any) -> None:
        self.inner.rollback(handle)

    def close(self, handle: Any, *, discard: bool) -> None:
        self.inner.close(handle, discard=discard)

    def status(self, xid: str, *, timeout: float) -> StatusReply:
        reply: StatusReply = self.inner.status(xid, timeout=timeout)
        self.ledger.statuses[str(reply.status)] += 1
        return reply


class AsyncFaultyAdapter(_Plan):
    """The asyncio twin (proxy calls are quick thread hand-offs)."""

    def __init__(self, inner: Any, proxy: Any, rng: random.Random, ledger: Ledger) -> None:
        super().__init__(proxy, rng, ledger)
        self.inner = inner

    async def open(self) -> Any:
        return await self.inner.open()

    async def begin(self, handle: Any) -> Any:
        target = await self.inner.begin(handle)
        if self.take("before"):
            self.proxy.close_connections()
        return target

    async def marker(self, handle: Any) -> tuple[str | None, str | None]:
        if self.take("middle"):
            self.proxy.close_connections()
        return await self.inner.marker(handle)  # type: ignore[no-any-return]

    async def commit(self, handle: Any) -> None:
        if not self.take("commit_lost"):
            await self.inner.commit(handle)
            return
        fault = self.proxy.add_fault("limit_data", bytes=3, direction="upstream")
        try:
            await self.inner.commit(handle)
        finally:
            self.proxy.remove_fault(fault)

    async def rollback(self, handle: Any) -> None:
        await self.inner.rollback(handle)

    async def close(self, handle: Any, *, discard: bool) -> None:
        await self.inner.close(handle, discard=discard)

    async def status(self, xid: str, *, timeout: float) -> StatusReply:
        reply: StatusReply = await self.inner.status(xid, timeout=timeout)
        self.ledger.statuses[str(reply.status)] += 1
        return reply


def check_ledger(ledger: Ledger, rows: dict[int, int]) -> None:
    """Every acknowledged write present once; nothing doubled; nothing invented."""
    doubles = {i: n for i, n in rows.items() if n > 1}
    assert not doubles, f"written more than once: {sorted(doubles)[:10]}"
    invented = set(rows) - set(ledger.outcome)
    assert not invented, f"rows nobody wrote: {sorted(invented)[:10]}"
    lost = [i for i, o in ledger.outcome.items() if o == "ok" and rows.get(i) != 1]
    assert not lost, f"acknowledged but missing: {lost[:10]}"
    phantom = [i for i, o in ledger.outcome.items() if o == "failed" and i in rows]
    assert not phantom, f"reported failed but written: {phantom[:10]}"
