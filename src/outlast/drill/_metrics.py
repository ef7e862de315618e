"""The service's own view of each scenario, from its Prometheus ``/metrics``.

When the drilled service serves outlast's metrics (``outlast.prometheus``),
the drill scrapes them every second and at each scenario's start and end
(`MetricsPoller`), and keeps what changed over the scenario (`delta`): the
outages the Guard saw and how long they lasted, breaker transitions, retries
by outcome, calls the breaker refused, the 503s the web layer gave and why,
lost COMMITs resolved or left unknown, and the pool's busiest moment. A
service without ``/metrics`` (404, an error, or not the exposition format) gets
no metrics view at all.

The exposition is read with prometheus-client's own parser, imported only
when a service answers: the drill works without the package (``pip install
'outlast[drill]'`` brings it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "COLUMNS",
    "MetricsDelta",
    "MetricsPoller",
    "Samples",
    "Scrape",
    "delta",
    "parse_exposition",
]

#: One sample: its name (``outlast_retries_total``) and sorted label pairs.
Key = tuple[str, tuple[tuple[str, str], ...]]
Samples = dict[Key, float]


def parse_exposition(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels.

    Raises `ValueError` when the text is not the exposition format (an HTML
    page, JSON) and `ModuleNotFoundError` without prometheus-client.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return samples


@dataclass(frozen=True)
class Scrape:
    at: float  # seconds since the drill began
    samples: Samples


def _by(samples: Samples, name: str, label: str | None = None) -> dict[str, float]:
    """Sum of the samples called ``name``, grouped by one label (``""``: all together)."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n != name:
            continue
        key = dict(labels).get(label, "") if label else ""
        out[key] = out.get(key, 0.0) + v
    return out


def _grown(
    before: Samples, after: Samples, name: str, label: str | None = None
) -> dict[str, float]:
    """How much a counter grew between two scrapes, by label (never below 0: a restart)."""
    b, a = _by(before, name, label), _by(after, name, label)
    return {k: max(0.0, v - b.get(k, 0.0)) for k, v in a.items()}


def _total(before: Samples, after: Samples, name: str) -> float:
    return sum(_grown(before, after, name).values())


@dataclass
class MetricsDelta:
    """What the service's metrics say happened during one scenario."""

    scrapes: int
    outages: int = 0
    downtime: float = 0.0  # seconds, from the Guard's counter
    longest_down: float = 0.0  # the largest "down for" gauge seen, seconds
    transitions: dict[str, int] = field(default_factory=dict)  # state entered -> n
    rejected: int = 0  # calls the breaker refused at once
    retries: int = 0  # sleeps before another try
    retry_calls: dict[str, int] = field(default_factory=dict)  # R4j's kinds -> n
    faults: dict[str, int] = field(default_factory=dict)  # reason -> n
    answers: dict[str, int] = field(default_factory=dict)  # "503 ERROR reason" -> n
    commits: dict[str, int] = field(default_factory=dict)  # committed / aborted / unknown
    pool_used_peak: int | None = None  # most connections in use at once
    pool_max: int | None = None
    pool_timeouts: int = 0
    task_restarts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "scrapes": self.scrapes,
            "outages": self.outages,
            "downtime_seconds": round(self.downtime, 3),
            "longest_down_seconds": round(self.longest_down, 3),
            "breaker_transitions": self.transitions,
            "rejected_calls": self.rejected,
            "retries": self.retries,
            "retry_calls": self.retry_calls,
            "faults": self.faults,
            "fault_responses": self.answers,
            "commit_outcomes": self.commits,
            "pool_used_peak": self.pool_used_peak,
            "pool_max": self.pool_max,
            "pool_timeouts": self.pool_timeouts,
            "task_restarts": self.task_restarts,
        }

    def cells(self) -> dict[str, str]:
        """The report's columns (`COLUMNS`) in words."""
        retries = f"{self.retries} {'retry' if self.retries == 1 else 'retries'}"
        if self.retry_calls:
            retries += "; calls: " + _counts(self.retry_calls, _RETRY_WORDS)
        pool = "-"
        if self.pool_used_peak is not None:
            pool = f"{self.pool_used_peak}" + (f" of {self.pool_max}" if self.pool_max else "")
            if self.pool_timeouts:
                pool += f", {self.pool_timeouts} checkouts timed out"
        return {
            "outages": f"{self.outages} ({self.downtime:.1f} s down)"
            if self.outages or self.downtime
            else "0",
            "breaker": _counts(self.transitions, _BREAKER_WORDS) or "stayed closed",
            "retries": retries,
            "rejected": str(self.rejected),
            "answers": _by_reason(self.answers),
            "faults": _by_reason(self.faults),
            "commits": _counts(self.commits, _COMMIT_WORDS) or "none lost",
            "pool": pool,
        }


#: The report's columns: key of `MetricsDelta.cells` -> heading.
COLUMNS = {
    "outages": "outages the Guard saw",
    "breaker": "breaker transitions",
    "retries": "retries",
    "rejected": "calls refused by the open breaker",
    "answers": "503s by reason",
    "faults": "faults by reason",
    "commits": "lost COMMIT replies",
    "pool": "pool connections in use (peak)",
}

# Words for the fixed vocabularies (label values stay as they are elsewhere:
# they are what an operator queries).
_BREAKER_WORDS = {"open": "opened", "half_open": "half-open", "closed": "closed again"}
_RETRY_WORDS = {
    "successful_with_retry": "succeeded after retrying",
    "failed_with_retry": "failed after retrying",
    "failed_without_retry": "failed without retrying",
}
_COMMIT_WORDS = {
    "committed": "resolved committed",
    "aborted": "resolved aborted",
    "unknown": "left unknown",
}


def _counts(counts: Mapping[str, int], words: Mapping[str, str]) -> str:
    keys = [k for k in words if counts.get(k)] + sorted(
        k for k in counts if k not in words and counts[k]
    )
    return ", ".join(f"{counts[k]} {words.get(k, k)}" for k in keys)


def _by_reason(counts: Mapping[str, int]) -> str:
    """``295, all connection_refused`` or ``193: 125 connect_timeout, 66 ...``."""
    items = sorted(((k, n) for k, n in counts.items() if n), key=lambda kv: (-kv[1], kv[0]))
    if not items:
        return "0"
    total = sum(n for _, n in items)
    if len(items) == 1:
        return f"{total}, all {items[0][0]}"
    return f"{total}: " + ", ".join(f"{n} {k}" for k, n in items)


def _peak(
    scrapes: Iterable[Scrape], name: str, *, label: str | None = None, value: str = ""
) -> float | None:
    """The largest sum of ``name`` samples (those whose ``label`` is ``value``) in any scrape."""
    peak: float | None = None
    for s in scrapes:
        found = False
        total = 0.0
        for (n, labels), v in s.samples.items():
            if n == name and (label is None or dict(labels).get(label) == value):
                found = True
                total += v
        if found:
            peak = total if peak is None else max(peak, total)
    return peak


def delta(scrapes: Sequence[Scrape], start: float, end: float) -> MetricsDelta | None:
    """What changed between ``start`` and ``end`` (None: no scrape brackets the span)."""
    ordered = sorted(scrapes, key=lambda s: s.at)
    before = next((s for s in reversed(ordered) if s.at <= start), None) or next(
        (s for s in ordered if start <= s.at < end), None
    )
    after = next((s for s in ordered if s.at >= end), None) or next(
        (s for s in reversed(ordered) if start < s.at <= end), None
    )
    if before is None or after is None or after.at <= before.at:
        return None
    inside = [s for s in ordered if before.at <= s.at <= after.at]
    b, a = before.samples, after.samples
    used = _peak(
        inside, "db_client_connection_count", label="db_client_connection_state", value="used"
    )
    limit = _peak(inside, "db_client_connection_max")
    return MetricsDelta(
        scrapes=len(inside),
        outages=int(_total(b, a, "outlast_database_outages_total")),
        downtime=float(_total(b, a, "outlast_database_downtime_seconds_total")),
        longest_down=_peak(inside, "outlast_database_down_for_seconds") or 0.0,
        transitions=_ints(_grown(b, a, "outlast_breaker_transitions_total", "to")),
        rejected=int(_total(b, a, "outlast_calls_rejected_total")),
        retries=int(_total(b, a, "outlast_retries_total")),
        retry_calls=_ints(_grown(b, a, "outlast_retry_calls_total", "kind")),
        faults=_ints(_grown(b, a, "outlast_faults_total", "reason")),
        answers=_grown_answers(b, a),
        commits=_ints(_grown(b, a, "outlast_commit_outcomes_total", "outcome")),
        pool_used_peak=None if used is None else int(used),
        pool_max=None if limit is None else int(limit),
        pool_timeouts=int(_total(b, a, "db_client_connection_timeouts_total")),
        task_restarts=int(_total(b, a, "outlast_task_restarts_total")),
    )


def _ints(d: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in d.items() if int(v)}


def _grown_answers(before: Samples, after: Samples) -> dict[str, int]:
    """Fault answers the web layer gave, by ``<status> <error> (<reason>)``."""
    name = "outlast_web_fault_responses_total"

    def keyed(samples: Samples) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), v in samples.items():
            if n == name:
                d = dict(labels)
                key = f"{d.get('reason', '?')}"
                if d.get("error") and d.get("error") != "SERVICE_UNAVAILABLE":
                    key = f"{d['error']} ({key})"
                if d.get("status") and d.get("status") != "503":
                    key = f"{d['status']} {key}"
                out[key] = out.get(key, 0.0) + v
        return out

    b, a = keyed(before), keyed(after)
    return {k: int(v - b.get(k, 0.0)) for k, v in a.items() if int(v - b.get(k, 0.0)) > 0}


class MetricsPoller:
    """Scrape ``path`` every `interval` seconds (and on demand) while a drill runs.

    `supported` is None until the first answer, False when the service has
    no metrics there (it then stops at once), True when it has.
    """

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        clock: Callable[[], float],
        headers: Mapping[str, str] | None = None,
        interval: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.path = path
        self.clock = clock
        self.headers = headers if headers is not None else {}
        self.interval = interval
        self.timeout = timeout
        self.scrapes: list[Scrape] = []
        self.supported: bool | None = None
        self._stop = asyncio.Event()
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()

    def stop(self) -> None:
        self._stop.set()

    async def scrape(self) -> Scrape | None:
        """One scrape now (None when the service has no metrics or did not answer)."""
        if self.supported is False or self._client is None:
            return None
        async with self._lock:  # one scrape at a time: their order is their time
            at = self.clock()
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.timeout):
                    resp = await self._client.get(self.path)
                    text = resp.text
            except (httpx.HTTPError, OSError, TimeoutError):
                return None  # a missed scrape; the next one will do
            if resp.status_code != 200:
                if self.supported is None:
                    self.supported = False
                return None
            if "# TYPE outlast_" not in text:
                self.supported = False  # no metrics of outlast's there: nothing to show
                return None
            try:
                samples = await asyncio.to_thread(parse_exposition, text)
            except (ValueError, ModuleNotFoundError):
                self.supported = False  # not Prometheus' format, or no parser here
                return None
            self.supported = True
            # The moment the answer describes: the middle of the exchange.
            scrape = Scrape(at + (time.monotonic() - started) / 2, samples)
            self.scrapes.append(scrape)
            return scrape

    async def run(self, deadline: float) -> None:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=dict(self.headers),
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
        ) as client:
            self._client = client
            try:
                while not self._stop.is_set() and self.clock() < deadline:
                    await self.scrape()
                    if self.supported is False:
                        return
                    try:
                        await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
                    except TimeoutError:
                        pass
            finally:
                self._client = None
