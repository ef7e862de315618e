"""What the drill checks in each scenario, from the recorded traffic alone.

Each check's ``detail`` says what happened in words a reader understands at
once ("289 answered 500", "background loop died", "31 writes left unknown
(12 of them stored)"), from counts kept in `Tally`; `ScenarioResult.in_words`
joins the failed ones into the one line the comparison tables show.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from outlast.drill._ledger import LedgerResult
from outlast.drill._metrics import MetricsDelta
from outlast.drill._scenarios import FaultWindow
from outlast.drill._traffic import HealthSample, RequestRecord

__all__ = ["CHECK_TITLES", "Check", "ScenarioResult", "Tally", "evaluate", "plural"]

CHECK_TITLES = {
    "no_500": "no 5xx but 503",
    "retry_after": "503s carry Retry-After",
    "budget": "no request past its budget",
    "ping": "no-database route up",
    "live": "liveness up",
    "background": "background loop alive",
    "recovery": "recovers after the fault",
    "writes": "no write lost or doubled",
    "settled": "no client left guessing",
}


@dataclass
class Check:
    name: str
    passed: bool | None  # None: not applicable / skipped
    detail: str = ""

    @property
    def title(self) -> str:
        return CHECK_TITLES.get(self.name, self.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "passed": self.passed,
            "detail": self.detail,
        }


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``1 request``, ``2 requests`` (``many`` for irregular plurals)."""
    return f"{n} {noun if n == 1 else many or noun + 's'}"


@dataclass
class Tally:
    """What happened to one scenario's requests, counted (the numbers behind the words)."""

    answered_5xx: dict[int, int] = field(default_factory=dict)  # status -> n, 503 excluded
    answered_503: int = 0
    without_retry_after: int = 0
    past_budget: int = 0
    unanswered: int = 0  # no answer before the client gave up (budget + margin)
    worst: float = 0.0  # the slowest request, in seconds
    probes_failed: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (bad, all)
    dead_loops: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "answered_5xx": {str(k): v for k, v in sorted(self.answered_5xx.items())},
            "answered_503": self.answered_503,
            "without_retry_after": self.without_retry_after,
            "past_budget": self.past_budget,
            "unanswered": self.unanswered,
            "worst_seconds": round(self.worst, 3),
            "probes_failed": {k: list(v) for k, v in self.probes_failed.items()},
            "dead_loops": self.dead_loops,
        }


@dataclass
class ScenarioResult:
    name: str
    start: float
    end: float
    windows: list[FaultWindow]
    checks: list[Check] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    first_503: float | None = None
    recovery: float | None = None
    recovered_at: float | None = None
    ledger: LedgerResult | None = None
    error: str | None = None
    #: Did its faults fire? False: the proxy saw none of them act (a commit_lost
    #: against a service that never sends COMMIT), so nothing was tested.
    exercised: bool | None = None
    tally: Tally = field(default_factory=Tally)
    #: The service's own metrics over the scenario (``/metrics``), when it serves them.
    metrics: MetricsDelta | None = None

    @property
    def in_words(self) -> str:
        """What happened, in one line: the failed checks' details, or how it passed."""
        if self.error is not None:
            return f"error: {self.error}"
        if self.exercised is False:
            return "not exercised: its fault never fired"
        failed = [c.detail or c.title for c in self.checks if c.passed is False]
        if failed:
            return ", ".join(failed)
        parts = []
        if self.tally.answered_503:
            parts.append(f"{self.tally.answered_503} answered 503")
        if self.recovery is not None:
            parts.append(f"recovered in {self.recovery:.1f} s")
        return ", ".join(parts) or "every check passed"

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and self.exercised is not False
            and all(c.passed is not False for c in self.checks)
        )

    @property
    def verdict(self) -> str:
        """``pass``, ``fail``, ``error`` or ``not exercised`` (never a pass)."""
        if self.error is not None:
            return "error"
        if self.exercised is False:
            return "not exercised"
        return "pass" if self.passed else "fail"

    @property
    def not_exercised_detail(self) -> str:
        faults = ", ".join(sorted({w.fault for w in self.windows}))
        return f"the proxy saw its fault ({faults}) act on nothing: no check of it was made"

    @property
    def fault_start(self) -> float:
        return min((w.start for w in self.windows), default=self.start)

    @property
    def fault_end(self) -> float:
        return max((w.end for w in self.windows), default=self.start)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "verdict": self.verdict,
            "exercised": self.exercised,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "fault_windows": [
                {
                    "fault": w.fault,
                    "start": round(w.start, 3),
                    "end": round(w.end, 3),
                    "hits": w.hits,
                }
                for w in self.windows
            ],
            "requests": sum(self.outcomes.values()),
            "outcomes": self.outcomes,
            "time_to_first_503": _r(self.first_503),
            "recovery_seconds": _r(self.recovery),
            "in_words": self.in_words,
            "tally": self.tally.as_dict(),
            "checks": [c.as_dict() for c in self.checks],
            "metrics": self.metrics.as_dict() if self.metrics else None,
            "writes": self.ledger.as_dict() if self.ledger else None,
            "error": self.error,
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def evaluate(
    result: ScenarioResult,
    records: Sequence[RequestRecord],
    health: Sequence[HealthSample],
    *,
    budget: float,
    max_recovery: float,
    has_ping: bool,
    has_live: bool,
    health_supported: bool | None,
) -> ScenarioResult:
    """Fill ``result.checks`` and metrics from the records inside its time span."""
    recs = [r for r in records if result.start <= r.start < result.end]
    result.outcomes = dict(Counter(r.outcome for r in recs))
    tally = result.tally = Tally()
    checks: list[Check] = []

    bad = [r for r in recs if r.outcome == "5xx"]
    statuses = Counter(r.status for r in bad if r.status is not None)
    tally.answered_5xx = dict(sorted(statuses.items()))
    u = [r for r in recs if r.status == 503]
    tally.answered_503 = len(u)
    answered = ", ".join(f"{n} answered {s}" for s, n in sorted(statuses.items()))
    others = len(bad) - sum(statuses.values())
    if others:
        answered = ", ".join(x for x in (answered, f"{others} other server errors") if x)
    checks.append(
        Check(
            "no_500",
            not bad,
            answered if bad else (f"{len(u)} answered 503 instead" if u else "no 5xx"),
        )
    )

    missing = [r for r in u if not r.retry_after]
    tally.without_retry_after = len(missing)
    checks.append(
        Check(
            "retry_after",
            not missing if u else None,
            (
                f"{len(missing)} of {plural(len(u), '503')} without Retry-After"
                if missing
                else f"all {plural(len(u), '503')} carry Retry-After"
            )
            if u
            else "no 503 seen",
        )
    )

    slow = [r for r in recs if r.outcome == "timeout" or r.latency > budget]
    unanswered = sum(1 for r in slow if r.outcome == "timeout")
    worst = max((r.latency for r in recs), default=0.0)
    tally.past_budget, tally.unanswered, tally.worst = len(slow), unanswered, worst
    if slow:
        detail = f"{plural(len(slow), 'request')} past the {budget:g} s budget"
        detail += f" ({unanswered} timed out)" if unanswered else f" (worst {worst:.1f} s)"
    else:
        detail = f"worst {worst:.2f} s"
    checks.append(Check("budget", not slow, detail))

    for name, kind, present, what in (
        ("ping", "ping", has_ping, "no-database route"),
        ("live", "live", has_live, "liveness"),
    ):
        sub = [r for r in recs if r.kind == kind]
        if not present or not sub:
            checks.append(Check(name, None, "not configured" if not present else "no request"))
            continue
        failed = [r for r in sub if r.outcome != "ok"]
        tally.probes_failed[kind] = (len(failed), len(sub))
        checks.append(
            Check(
                name,
                not failed,
                f"{what} failed {len(failed)} of {plural(len(sub), 'time')}"
                if failed
                else f"{what} up ({len(sub)} of {len(sub)})",
            )
        )

    samples = [h for h in health if result.start <= h.at < result.end]
    components = sorted({k for h in samples for k in h.background})
    if health_supported is False or not components:
        checks.append(Check("background", None, "no background task reported"))
    else:
        answered_health = [h for h in samples if h.status is not None and h.background]
        last = answered_health[-1] if answered_health else None
        dead = sorted(k for k, ok in (last.background.items() if last else []) if not ok)
        tally.dead_loops = dead
        if last is None:
            checks.append(Check("background", False, "health endpoint never answered"))
        elif not dead:
            checks.append(
                Check("background", True, f"{plural(len(components), 'background loop')} alive")
            )
        else:
            # Dead already when the scenario began: an earlier fault killed it.
            at_start = answered_health[0].background
            before = all(at_start.get(k) is False for k in dead)
            what = "background loop" if len(dead) == 1 else f"{len(dead)} background loops"
            checks.append(
                Check("background", False, f"{what} {'still dead' if before else 'died'}")
            )

    fs, fe = result.fault_start, result.fault_end
    first = next(
        (r for r in sorted(recs, key=lambda r: r.start) if r.start >= fs and r.status == 503), None
    )
    result.first_503 = None if first is None else max(0.0, first.start - fs)
    data = sorted(
        (r for r in recs if r.kind in {"read", "write"} and r.start >= fe and r.outcome == "ok"),
        key=lambda r: r.start + r.latency,
    )
    if data:
        result.recovered_at = data[0].start + data[0].latency
        result.recovery = max(0.0, result.recovered_at - fe)
    if result.recovery is None:
        checks.append(
            Check("recovery", False, f"not recovered {result.end - fe:.1f} s after the fault")
        )
    else:
        ok = result.recovery <= max_recovery
        checks.append(
            Check(
                "recovery",
                ok,
                f"recovered in {result.recovery:.1f} s"
                if ok
                else f"recovered only after {result.recovery:.1f} s",
            )
        )

    if result.ledger is not None:
        lg = result.ledger
        if not lg.read_ok:
            checks.append(
                Check("writes", False, f"writes not read back: {lg.read_error or 'failed'}")
            )
        else:
            checks.append(_writes(lg))
            checks.append(_settled(lg))
    result.checks = checks
    return result


def _writes(lg: LedgerResult) -> Check:
    """Every acknowledged write stored once, no failed one stored, nothing made up."""
    wrong = [
        f"{plural(len(items), what[0], what[1])} {what[2]}"
        for items, what in (
            (lg.lost, ("acknowledged write", "acknowledged writes", "lost")),
            (lg.duplicated, ("write", "writes", "stored twice")),
            (lg.failed_present, ("write", "writes", "answered as failed but stored")),
            (lg.unexpected, ("write", "writes", "stored that were never sent")),
        )
        if items
    ]
    parts = [f"{lg.acknowledged} ok, {lg.failed} failed, {lg.unknown} unknown"]
    if lg.unchecked:
        parts.append(f"{lg.unchecked} could not be looked up")
    if not lg.attempted:
        return Check("writes", None, "no write attempted")
    if not lg.passed:
        return Check("writes", False, ", ".join(wrong))
    return Check("writes", True, "; ".join(parts))


def _settled(lg: LedgerResult) -> Check:
    """Whether every client learnt what became of its write.

    Jepsen allows unknown outcomes, and so does this check when the service
    *said* so (a 503 ``OUTCOME_UNKNOWN``: a COMMIT it could not resolve in
    time, the client knows to look before sending it again). A timeout, a
    500 or a reset connection leaves the client guessing: that fails.
    """
    if not lg.attempted:
        return Check("settled", None)
    silent = lg.unknown - lg.unknown_told
    if not lg.unknown:
        return Check("settled", True, f"all {lg.attempted} writes definitely ok or failed")
    if silent:
        detail = f"{plural(silent, 'write')} left unknown ({lg.silent_present} of them stored)"
        if lg.unknown_told:
            detail += f", {lg.unknown_told} more said so"
        return Check("settled", False, detail)
    return Check(
        "settled",
        True,
        f"{plural(lg.unknown_told, 'write')} reported unknown by the service "
        f"({lg.unknown_present} of them stored), none left unknown silently",
    )
