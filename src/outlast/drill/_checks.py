"""What the drill checks in each scenario, from the recorded traffic alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from outlast.drill._ledger import LedgerResult
from outlast.drill._scenarios import FaultWindow
from outlast.drill._traffic import HealthSample, RequestRecord

__all__ = ["CHECK_TITLES", "Check", "ScenarioResult", "evaluate"]

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
            "checks": [c.as_dict() for c in self.checks],
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
    checks: list[Check] = []

    bad = [r for r in recs if r.outcome == "5xx"]
    statuses = Counter(r.status for r in bad)
    checks.append(
        Check(
            "no_500",
            not bad,
            ", ".join(f"{n}x {s}" for s, n in sorted(statuses.items(), key=lambda x: str(x[0])))
            or f"{sum(1 for r in recs if r.outcome == '503')} clean 503s",
        )
    )

    u = [r for r in recs if r.status == 503]
    missing = [r for r in u if not r.retry_after]
    checks.append(
        Check(
            "retry_after",
            not missing if u else None,
            f"{len(missing)} of {len(u)} 503s without Retry-After" if u else "no 503 seen",
        )
    )

    slow = [r for r in recs if r.outcome == "timeout" or r.latency > budget]
    worst = max((r.latency for r in recs), default=0.0)
    checks.append(
        Check(
            "budget",
            not slow,
            f"{len(slow)} over {budget:g} s (worst {worst:.1f} s)"
            if slow
            else f"worst {worst:.2f} s",
        )
    )

    for name, kind, present in (("ping", "ping", has_ping), ("live", "live", has_live)):
        sub = [r for r in recs if r.kind == kind]
        if not present or not sub:
            checks.append(Check(name, None, "not configured" if not present else "no request"))
            continue
        failed = [r for r in sub if r.outcome != "ok"]
        checks.append(Check(name, not failed, f"{len(failed)} of {len(sub)} failed"))

    samples = [h for h in health if result.start <= h.at < result.end]
    components = sorted({k for h in samples for k in h.background})
    if health_supported is False or not components:
        checks.append(Check("background", None, "no background task reported"))
    else:
        answered = [h for h in samples if h.status is not None and h.background]
        last = answered[-1] if answered else None
        dead = sorted(k for k, ok in (last.background.items() if last else []) if not ok)
        if last is None:
            checks.append(Check("background", False, "health endpoint never answered"))
        else:
            checks.append(
                Check(
                    "background",
                    not dead,
                    f"dead: {', '.join(dead)}" if dead else f"{len(components)} alive",
                )
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
        checks.append(Check("recovery", False, f"no success within {result.end - fe:.1f} s"))
    else:
        checks.append(
            Check(
                "recovery",
                result.recovery <= max_recovery,
                f"{result.recovery:.1f} s after the fault cleared",
            )
        )

    if result.ledger is not None:
        lg = result.ledger
        if not lg.read_ok:
            checks.append(Check("writes", False, lg.read_error or "read-back failed"))
        else:
            parts = [f"{lg.acknowledged} ok, {lg.failed} failed, {lg.unknown} unknown"]
            if lg.unknown:
                parts.append(f"{lg.unknown_present} of the unknown present")
            if lg.unchecked:
                parts.append(f"{lg.unchecked} could not be looked up")
            for label, items in (
                ("LOST", lg.lost),
                ("DOUBLED", lg.duplicated),
                ("failed but applied", lg.failed_present),
                ("never attempted", lg.unexpected),
            ):
                if items:
                    parts.append(f"{len(items)} {label}")
            checks.append(Check("writes", lg.passed if lg.attempted else None, "; ".join(parts)))
            checks.append(_settled(lg))
    result.checks = checks
    return result


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
    detail = (
        f"{silent} of {lg.attempted} writes left the client guessing, "
        f"{lg.unknown_told} reported unknown ({lg.unknown_present} of all unknown applied)"
    )
    return Check("settled", silent == 0, detail)
