"""Verdicts: how close each slot is to losing its WAL, against thresholds.

A slot gets the worst verdict any rule gives it:

- ``lost``: ``wal_status = 'lost'``, an ``invalidation_reason`` or a conflict
  with recovery (the server will never stream from it again), or a watched
  slot that does not exist.
- ``critical``: ``wal_status = 'unreserved'`` (the next checkpoint removes the
  WAL it needs unless its consumer catches up first).
- retained WAL at or above `warn_bytes` / `critical_bytes`;
- retained WAL at or above `warn_fraction` / `critical_fraction` of the limit:
  ``max_slot_wal_keep_size``, or `wal_budget` (the disk space WAL may fill)
  when that is smaller or the server has no limit;
- estimated time to loss at or below `warn_time_to_loss` /
  `critical_time_to_loss`: the bytes left (the server's ``safe_wal_size``,
  or the budget minus what is retained) divided by how fast the slot's
  retained WAL grew over `rate_window`. A slot that is not falling behind has
  no time to loss, however busy the server is;
- inactive (no consumer connected) for `inactive_warn` / `inactive_critical`.

`judge` is pure: it takes a `SlotStatus`, the `ServerStatus` and the growth
rate, and returns a `SlotReport`. The monitor does the I/O and bookkeeping.
"""

from __future__ import annotations

import datetime
import enum
import math
from dataclasses import dataclass
from typing import Any

from outlast import ConfigurationError

from ._model import ServerStatus, SlotStatus, Snapshot
from ._units import duration, format_bytes, format_duration, optional_duration, parse_bytes

__all__ = ["SlotReport", "Thresholds", "Verdict", "judge", "missing_report"]


class Verdict(enum.IntEnum):
    """How bad a slot's state is; ordered, so ``max()`` gives the worst."""

    OK = 0
    WARN = 1
    CRITICAL = 2
    LOST = 3

    def __str__(self) -> str:
        return self.name.lower()


_Duration = float | datetime.timedelta


def _fraction(value: float | None, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigurationError(f"{what} must be a fraction in (0, 1], not {value!r}")
    if not 0 < value <= 1:
        raise ConfigurationError(f"{what} must be a fraction in (0, 1], not {value!r}")
    return float(value)


def _ordered(
    warn: float | None, critical: float | None, what: str, *, larger_is_worse: bool
) -> None:
    if warn is None or critical is None:
        return
    if (warn > critical) if larger_is_worse else (warn < critical):
        relation = "<=" if larger_is_worse else ">="
        warn_name = "inactive_warn" if what == "inactive" else f"warn_{what}"
        critical_name = "inactive_critical" if what == "inactive" else f"critical_{what}"
        raise ConfigurationError(f"{warn_name} must be {relation} {critical_name}")


class Thresholds:
    """When a slot is ``warn`` or ``critical`` (an immutable value; see the module doc).

    Sizes are bytes or strings such as ``"64MB"`` (powers of 1024);
    durations are seconds or `timedelta`; ``None`` switches a rule off. The
    defaults: warn at 50 % and critical at 80 % of ``max_slot_wal_keep_size``,
    warn 6 h and critical 1 h before the estimated loss, warn after 30 min
    without a consumer. With the server's default unlimited
    ``max_slot_wal_keep_size`` the limit is the disk: give `warn_bytes` /
    `critical_bytes`, or `wal_budget` for the fraction and time rules.
    """

    __slots__ = (
        "critical_bytes",
        "critical_fraction",
        "critical_time_to_loss",
        "inactive_critical",
        "inactive_warn",
        "rate_window",
        "wal_budget",
        "warn_bytes",
        "warn_fraction",
        "warn_time_to_loss",
    )

    warn_bytes: int | None
    critical_bytes: int | None
    warn_fraction: float | None
    critical_fraction: float | None
    warn_time_to_loss: float | None
    critical_time_to_loss: float | None
    inactive_warn: float | None
    inactive_critical: float | None
    wal_budget: int | None
    rate_window: float

    def __init__(
        self,
        *,
        warn_bytes: int | str | None = None,
        critical_bytes: int | str | None = None,
        warn_fraction: float | None = 0.5,
        critical_fraction: float | None = 0.8,
        warn_time_to_loss: _Duration | None = datetime.timedelta(hours=6),
        critical_time_to_loss: _Duration | None = datetime.timedelta(hours=1),
        inactive_warn: _Duration | None = datetime.timedelta(minutes=30),
        inactive_critical: _Duration | None = None,
        wal_budget: int | str | None = None,
        rate_window: _Duration = datetime.timedelta(minutes=10),
    ) -> None:
        def size(value: int | str | None, what: str) -> int | None:
            return None if value is None else parse_bytes(value, what)

        values: dict[str, Any] = {
            "warn_bytes": size(warn_bytes, "warn_bytes"),
            "critical_bytes": size(critical_bytes, "critical_bytes"),
            "warn_fraction": _fraction(warn_fraction, "warn_fraction"),
            "critical_fraction": _fraction(critical_fraction, "critical_fraction"),
            "warn_time_to_loss": optional_duration(warn_time_to_loss, "warn_time_to_loss"),
            "critical_time_to_loss": optional_duration(
                critical_time_to_loss, "critical_time_to_loss"
            ),
            "inactive_warn": optional_duration(inactive_warn, "inactive_warn"),
            "inactive_critical": optional_duration(inactive_critical, "inactive_critical"),
            "wal_budget": size(wal_budget, "wal_budget"),
            "rate_window": duration(rate_window, "rate_window"),
        }
        _ordered(values["warn_bytes"], values["critical_bytes"], "bytes", larger_is_worse=True)
        _ordered(
            values["warn_fraction"], values["critical_fraction"], "fraction", larger_is_worse=True
        )
        _ordered(
            values["warn_time_to_loss"],
            values["critical_time_to_loss"],
            "time_to_loss",
            larger_is_worse=False,
        )
        _ordered(
            values["inactive_warn"], values["inactive_critical"], "inactive", larger_is_worse=True
        )
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Thresholds are immutable; use replace()")

    def replace(self, **changes: Any) -> Thresholds:
        """A copy with some options changed (validated like the original)."""
        unknown = sorted(set(changes) - set(self.__slots__))
        if unknown:
            raise ConfigurationError(f"unknown threshold option(s): {', '.join(unknown)}")
        current = {name: getattr(self, name) for name in self.__slots__}
        return Thresholds(**{**current, **changes})

    def as_dict(self) -> dict[str, Any]:
        """Every option in bytes, fractions and seconds."""
        return {name: getattr(self, name) for name in sorted(self.__slots__)}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thresholds) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash(tuple(self.as_dict().items()))

    def __repr__(self) -> str:
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name in sorted(self.__slots__)
            if getattr(self, name) != Thresholds._normal(name)
        ]
        return f"Thresholds({', '.join(changed)})"

    @staticmethod
    def _normal(name: str) -> Any:
        return getattr(_DEFAULT_THRESHOLDS, name)


_DEFAULT_THRESHOLDS = Thresholds()


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotReport:
    """A slot's verdict, why, and the numbers behind it.

    `status` is None for a watched slot that does not exist. `limit_bytes`
    is the retention limit the fraction rule used (None: unbounded);
    `bytes_left` how much more WAL may be written before the slot is lost;
    `growth_rate` how fast its retained WAL grew (bytes/s, over the rate
    window); `time_to_loss` seconds until `bytes_left` is used up at that
    rate (None: not falling behind, or no limit); `inactive_for` seconds
    without a consumer.
    """

    name: str
    status: SlotStatus | None
    verdict: Verdict
    reasons: tuple[str, ...]
    limit_bytes: int | None = None
    used_fraction: float | None = None
    bytes_left: int | None = None
    growth_rate: float | None = None
    time_to_loss: float | None = None
    inactive_for: float | None = None

    @property
    def retained_bytes(self) -> int | None:
        return None if self.status is None else self.status.retained_bytes

    @property
    def wal_status(self) -> str | None:
        return None if self.status is None else self.status.wal_status

    @property
    def active(self) -> bool:
        return self.status is not None and self.status.active

    def summary(self) -> str:
        """One line for logs: the verdict's reasons, or the key numbers when ok."""
        if self.reasons:
            return "; ".join(self.reasons)
        return f"retained {format_bytes(self.retained_bytes)}"


def missing_report(name: str) -> SlotReport:
    """The report of a watched slot that is not on the server."""
    return SlotReport(
        name=name,
        status=None,
        verdict=Verdict.LOST,
        reasons=("slot does not exist (dropped?): its consumer cannot resume",),
    )


def _limit(server: ServerStatus, th: Thresholds) -> tuple[int | None, str | None]:
    keep, budget = server.max_slot_wal_keep_size, th.wal_budget
    if keep is not None and (budget is None or keep <= budget):
        return keep, "max_slot_wal_keep_size"
    if budget is not None:
        return budget, "wal_budget"
    return None, None


def judge(
    slot: SlotStatus,
    snapshot: Snapshot,
    th: Thresholds,
    *,
    growth_rate: float | None,
) -> SlotReport:
    """The verdict for `slot` in `snapshot` (see the module doc for the rules)."""
    server = snapshot.server
    verdict = Verdict.OK
    reasons: list[str] = []

    def raise_to(level: Verdict, why: str) -> None:
        nonlocal verdict
        verdict = max(verdict, level)
        reasons.append(why)

    if slot.wal_status == "lost":
        raise_to(Verdict.LOST, "wal_status=lost: the WAL it needs was removed")
    elif slot.invalidation_reason is not None:
        raise_to(Verdict.LOST, f"invalidated: {slot.invalidation_reason}")
    elif slot.conflicting:
        raise_to(Verdict.LOST, "invalidated: conflict with recovery")
    elif slot.wal_status == "unreserved":
        raise_to(
            Verdict.CRITICAL,
            "wal_status=unreserved: the next checkpoint removes the WAL it needs",
        )

    retained = slot.retained_bytes
    limit, limit_name = _limit(server, th)
    used = None if retained is None or not limit else retained / limit
    if retained is not None and verdict < Verdict.LOST:
        for level, threshold in (
            (Verdict.CRITICAL, th.critical_bytes),
            (Verdict.WARN, th.warn_bytes),
        ):
            if threshold is not None and retained >= threshold:
                raise_to(
                    level,
                    f"retained {format_bytes(retained)} >= {level} {format_bytes(threshold)}",
                )
                break
        for level, fraction in (
            (Verdict.CRITICAL, th.critical_fraction),
            (Verdict.WARN, th.warn_fraction),
        ):
            if used is not None and fraction is not None and used >= fraction:
                raise_to(
                    level,
                    f"retained {used:.0%} of {limit_name} {format_bytes(limit)}"
                    f" >= {level} {fraction:.0%}",
                )
                break

    bytes_left: int | None = None
    if retained is not None and not slot.invalidated:
        candidates = []
        if slot.safe_wal_size is not None:
            candidates.append(slot.safe_wal_size)
        if th.wal_budget is not None:
            candidates.append(th.wal_budget - retained)
        bytes_left = min(candidates) if candidates else None

    time_to_loss: float | None = None
    if bytes_left is not None:
        if bytes_left <= 0:
            time_to_loss = 0.0
        elif growth_rate is not None and growth_rate > 0:
            time_to_loss = bytes_left / growth_rate
    if time_to_loss is not None and verdict < Verdict.LOST:
        for level, limit_s in (
            (Verdict.CRITICAL, th.critical_time_to_loss),
            (Verdict.WARN, th.warn_time_to_loss),
        ):
            if limit_s is not None and time_to_loss <= limit_s:
                raise_to(
                    level,
                    f"lost in about {format_duration(time_to_loss)} at"
                    f" {format_bytes(growth_rate)}/s (<= {level} {format_duration(limit_s)})"
                    if time_to_loss > 0
                    else f"no WAL left before loss (<= {level} {format_duration(limit_s)})",
                )
                break

    inactive_for: float | None = None
    if not slot.active and slot.inactive_since is not None:
        now = server.time if slot.inactive_source == "server" else snapshot.taken_at
        inactive_for = max(0.0, now - slot.inactive_since)
    if inactive_for is not None and verdict < Verdict.LOST:
        for level, limit_s in (
            (Verdict.CRITICAL, th.inactive_critical),
            (Verdict.WARN, th.inactive_warn),
        ):
            if limit_s is not None and inactive_for >= limit_s:
                approx = "" if slot.inactive_source == "server" else "at least "
                raise_to(
                    level,
                    f"no consumer for {approx}{format_duration(inactive_for)}"
                    f" (>= {level} {format_duration(limit_s)})",
                )
                break

    return SlotReport(
        name=slot.name,
        status=slot,
        verdict=verdict,
        reasons=tuple(reasons),
        limit_bytes=limit,
        used_fraction=used,
        bytes_left=bytes_left,
        growth_rate=growth_rate,
        time_to_loss=time_to_loss,
        inactive_for=inactive_for,
    )
