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

Read-back (`read_back`) lists what the service holds, following its pages
(`next_page`: a JSON ``next`` link, JSON:API ``links.next`` or a ``Link``
header), and/or reads each write by its id (`read_each`, ``--read-one``):
the service's own id taken from the write's answer, or the drill's id. A write
that neither way can look up (no list, and no id because the write never got
an answer) is *unchecked*, and said so: never counted as present or absent.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from outlast.drill._api import next_page

__all__ = [
    "Ledger",
    "LedgerResult",
    "WriteEntry",
    "extract_ids",
    "read_back",
    "read_each",
    "write_outcome",
]

#: Pages followed at most in one listing (a loop of next links must end).
MAX_PAGES = 10_000

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
    service_id: str | None = None  # the service's own id, from the write's answer


@dataclass
class LedgerResult:
    """The comparison of the ledger with what the service holds."""

    attempted: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    unknown_told: int = 0  # of the unknown: the service itself said "outcome unknown"
    unknown_present: int = 0
    silent_present: int = 0  # of the unknown the service did not report so: stored anyway
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    failed_present: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unchecked: int = 0  # writes the read-back had no way to look up
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
            "silent_present": self.silent_present,
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "failed_present": len(self.failed_present),
            "unexpected": len(self.unexpected),
            "unchecked": self.unchecked,
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
        service_id: str | None = None,
    ) -> None:
        result = write_outcome(outcome, problem=problem, outcome_unknown=outcome_unknown)
        told = result == UNKNOWN and outcome_unknown
        self.entries[write_id] = WriteEntry(write_id, result, at, told, service_id)

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
        checked: set[str] | None = None,
        listed: bool = True,
    ) -> LedgerResult:
        """Compare with ``present`` (id -> number of items holding it).

        With ``window`` only writes that started in ``[start, end)`` are judged
        (``unexpected`` ids are only reported without a window). ``checked``
        (None: all) are the writes the read-back could look up; the others
        count as `unchecked`. ``listed``: ``present`` comes from a listing of
        everything (needed to report ``unexpected`` ids).
        """
        res = LedgerResult()
        for entry in self.entries.values():
            if window is not None and not (window[0] <= entry.at < window[1]):
                continue
            res.attempted += 1
            if entry.outcome == OK:
                res.acknowledged += 1
            elif entry.outcome == FAILED:
                res.failed += 1
            else:
                res.unknown += 1
                res.unknown_told += entry.told
            if checked is not None and entry.id not in checked:
                res.unchecked += 1
                continue
            n = present.get(entry.id, 0)
            if n > 1:
                res.duplicated.append(entry.id)
            if entry.outcome == OK:
                if n == 0:
                    res.lost.append(entry.id)
            elif entry.outcome == FAILED:
                if n:
                    res.failed_present.append(entry.id)
            elif n:
                res.unknown_present += 1
                res.silent_present += not entry.told
        if window is None and listed:
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


async def _get_json(
    client: Any, method: str, url: str, *, per_request: float, end: float
) -> tuple[int, Any, Mapping[str, str]]:
    """One request, retried until it gets an answer that is not a 5xx (bounded by `end`)."""
    loop = asyncio.get_running_loop()
    last = "no answer"
    while True:
        try:
            async with asyncio.timeout(per_request):
                resp = await client.request(method, url)
            if resp.status_code < 500:
                body = resp.json() if 200 <= resp.status_code < 300 else None
                return resp.status_code, body, resp.headers
            last = f"read-back answered {resp.status_code}"
        except Exception as exc:  # transport errors, bad JSON: retry until the deadline
            last = f"read-back failed: {type(exc).__name__}"
        if loop.time() >= end:
            raise _ReadFailed(last)
        await asyncio.sleep(0.5)


class _ReadFailed(Exception):
    pass


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
    comma-separated; otherwise one listing is read. Every listing is followed
    through its pages. Returns (counts, None) or (None, reason).
    """
    ids = ledger.ids()
    if "{ids}" in path:
        paths = [
            path.replace("{ids}", ",".join(ids[i : i + chunk])) for i in range(0, len(ids), chunk)
        ]
    else:
        paths = [path]
    base = str(getattr(client, "base_url", "")) or "http://127.0.0.1/"
    end = asyncio.get_running_loop().time() + timeout
    total: Counter[str] = Counter()
    try:
        for first in paths:
            url: str | None = first
            pages = 0
            while url is not None:
                status, body, headers = await _get_json(
                    client, method, url, per_request=per_request, end=end
                )
                if not 200 <= status < 300:
                    return None, f"read-back answered {status}"
                total.update(ledger.find_ids(body))
                pages += 1
                if pages >= MAX_PAGES:
                    return None, f"read-back gave up after {MAX_PAGES} pages"
                url = next_page(base, url, headers, body)
    except _ReadFailed as exc:
        return None, str(exc)
    except ValueError as exc:  # a next link to another host, a body that is not JSON
        return None, f"read-back failed: {exc}"
    return total, None


async def read_each(
    client: Any,
    ledger: Ledger,
    path: str,
    *,
    by_service_id: bool,
    timeout: float = 60.0,
    per_request: float = 10.0,
    concurrency: int = 8,
) -> tuple[Counter[str] | None, set[str], str | None]:
    """Read every write by its id (``path`` holds ``{id}``): present when the answer
    is a 2xx that holds the drill's id, absent on a 404 or 410.

    ``by_service_id``: the id is the service's own (from the write's answer),
    so writes that never got an answer cannot be looked up. Returns (counts,
    the ids it could look up, None) or (None, set(), reason).
    """
    end = asyncio.get_running_loop().time() + timeout
    found: Counter[str] = Counter()
    checked: set[str] = set()
    gate = asyncio.Semaphore(concurrency)

    async def one(entry: WriteEntry) -> None:
        key = entry.service_id if by_service_id else entry.id
        if key is None:
            return
        url = path.replace("{id}", quote(key, safe=""))
        async with gate:
            status, body, _ = await _get_json(client, "GET", url, per_request=per_request, end=end)
        if 200 <= status < 300:
            checked.add(entry.id)
            if entry.id in str(body):  # the item holds the drill's id: it is this write
                found[entry.id] = 1
        elif status in (404, 410):
            checked.add(entry.id)
        else:
            raise _ReadFailed(f"reading one write answered {status}")

    try:
        await asyncio.gather(*(one(e) for e in ledger.entries.values()))
    except _ReadFailed as exc:
        return None, set(), str(exc)
    return found, checked, None
