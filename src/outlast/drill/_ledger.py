"""A Jepsen-style ledger of writes: what was attempted, what the service said.

Every write carries a unique id in its body. Its outcome is recorded outside
the database as

- ``ok``: the service acknowledged it (2xx), so it must exist afterwards;
- ``failed``: a definite failure (503 with a problem body, a 4xx, or the
  connection to the service refused), so it must *not* exist afterwards;
- ``unknown``: a timeout, a 500, a reset connection, or a 503 whose problem
  body says ``"error": "OUTCOME_UNKNOWN"`` (outlast's answer to a COMMIT it
  could not resolve): it may or may not exist.

After the run everything is read back and compared (Jepsen's set checker):
every acknowledged write present, none present twice, no definite failure
applied, nothing present that was never attempted; unknowns are reported with
how many turned out present.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ledger", "LedgerResult", "WriteEntry", "extract_ids", "write_outcome"]

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"


def write_outcome(outcome: str, *, problem: bool, outcome_unknown: bool = False) -> str:
    """The ledger outcome of a write from its request outcome class."""
    if outcome == "ok":
        return OK
    if outcome_unknown:
        return UNKNOWN  # the service itself says the write may have been applied
    if outcome == "503":
        return FAILED if problem else UNKNOWN
    if outcome in {"4xx", "refused"}:
        return FAILED
    return UNKNOWN  # timeout, 5xx, reset, other transport errors


@dataclass
class WriteEntry:
    id: str
    outcome: str
    at: float
    told: bool = False  # unknown, and the service said so (OUTCOME_UNKNOWN)


@dataclass
class LedgerResult:
    """The comparison of the ledger with what the service holds."""

    attempted: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_told: int = 0  # of the unknown: the service itself said "outcome unknown"
    unknown_present: int = 0
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    failed_present: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    read_ok: bool = True
    read_error: str | None = None

    @property
    def passed(self) -> bool:
        return self.read_ok and not (
            self.lost or self.duplicated or self.failed_present or self.unexpected
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempted": self.attempted,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "unknown": self.unknown,
            "unknown_told": self.unknown_told,
            "unknown_present": self.unknown_present,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "failed_present": len(self.failed_present),
            "unexpected": len(self.unexpected),
            "lost_ids": self.lost[:20],
            "duplicated_ids": self.duplicated[:20],
            "read_ok": self.read_ok,
            "read_error": self.read_error,
            "passed": self.passed,
        }


class Ledger:
    """Ids for writes and their outcomes; `check()` compares with a read-back."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"drill{secrets.token_hex(4)}"
        self._n = 0
        self.entries: dict[str, WriteEntry] = {}
        self._pattern = re.compile(rf"{re.escape(self.prefix)}-\d{{6,}}")

    def new_id(self) -> str:
        self._n += 1
        return f"{self.prefix}-{self._n:06d}"

    def record(
        self,
        write_id: str,
        outcome: str,
        *,
        problem: bool = False,
        outcome_unknown: bool = False,
        at: float = 0.0,
    ) -> None:
        result = write_outcome(outcome, problem=problem, outcome_unknown=outcome_unknown)
        told = result == UNKNOWN and outcome_unknown
        self.entries[write_id] = WriteEntry(write_id, result, at, told)

    def ids(self) -> list[str]:
        return list(self.entries)

    def find_ids(self, body: Any) -> Counter[str]:
        """Ids of this ledger in a read-back body, counted once per returned item."""
        return extract_ids(body, self._pattern)

    def check(
        self,
        present: Mapping[str, int],
        *,
        window: tuple[float, float] | None = None,
    ) -> LedgerResult:
        """Compare with ``present`` (id -> number of items holding it).

        With ``window`` only writes that started in ``[start, end)`` are judged
        (``unexpected`` ids are only reported without a window).
        """
        res = LedgerResult()
        for entry in self.entries.values():
            if window is not None and not (window[0] <= entry.at < window[1]):
                continue
            res.attempted += 1
            n = present.get(entry.id, 0)
            if n > 1:
                res.duplicated.append(entry.id)
            if entry.outcome == OK:
                res.acknowledged += 1
                if n == 0:
                    res.lost.append(entry.id)
            elif entry.outcome == FAILED:
                res.failed += 1
                if n:
                    res.failed_present.append(entry.id)
            else:
                res.unknown += 1
                res.unknown_told += entry.told
                if n:
                    res.unknown_present += 1
        if window is None:
            res.unexpected = sorted(i for i in present if i not in self.entries)
        return res


def extract_ids(body: Any, pattern: re.Pattern[str]) -> Counter[str]:
    """Count, for each id matching ``pattern``, the items in ``body`` that hold it.

    An item is an object inside a JSON array (a list of rows, or an ``items`` /
    ``leads`` / ``data`` array of an envelope); an id found several times in one
    item (e.g. in its ``id`` and ``email``) counts once.
    """
    counts: Counter[str] = Counter()

    def strings(value: Any, depth: int) -> Iterable[str]:
        if depth > 8:
            return
        if isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            for v in value.values():
                yield from strings(v, depth + 1)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v, depth + 1)

    def visit(value: Any, depth: int) -> None:
        if depth > 8:
            return
        if isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping | str):
                    found = {m for s in strings(item, 0) for m in pattern.findall(s)}
                    counts.update(found)
                else:
                    visit(item, depth + 1)
        elif isinstance(value, Mapping):
            for v in value.values():
                visit(v, depth + 1)

    visit(body, 0)
    return counts


async def read_back(
    client: Any,
    ledger: Ledger,
    method: str,
    path: str,
    *,
    chunk: int = 50,
    timeout: float = 30.0,
    per_request: float = 10.0,
) -> tuple[Counter[str] | None, str | None]:
    """Read what the service holds, retrying until it answers (bounded by ``timeout``).

    ``path`` may contain ``{ids}``: the ledger's ids are then sent in chunks,
    comma-separated; otherwise one request is made (e.g. a full list).
    Returns (counts, None) or (None, reason).
    """
    ids = ledger.ids()
    if "{ids}" in path:
        paths = [
            path.replace("{ids}", ",".join(ids[i : i + chunk])) for i in range(0, len(ids), chunk)
        ]
    else:
        paths = [path]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    total: Counter[str] = Counter()
    last_error = "no answer"
    for p in paths:
        while True:
            try:
                async with asyncio.timeout(per_request):
                    resp = await client.request(method, p)
                if 200 <= resp.status_code < 300:
                    total.update(ledger.find_ids(resp.json()))
                    break
                last_error = f"read-back answered {resp.status_code}"
            except Exception as exc:  # transport errors, bad JSON: retry until the deadline
                last_error = f"read-back failed: {type(exc).__name__}"
            if loop.time() >= end:
                return None, last_error
            await asyncio.sleep(0.5)
    return total, None
