"""Is it safe for a change-data-capture consumer to resume from its stored offset?

A consumer stores the LSN up to which it has processed changes (its
*offset*) and resumes from it after a restart. Resuming is only safe when
the slot still holds every change after that LSN. `check_offset` compares
the offset with the slot and the server and answers with one `OffsetVerdict`:

- ``safe``: the slot exists, holds its WAL, and is not past the offset.
- ``other_cluster``: the offset was stored against another server (its
  system identifier differs).
- ``from_future``: the offset is ahead of the server's WAL: the server was
  restored from a backup (or to a point in time) after the offset was
  stored, or this is not the server the offset came from.
- ``slot_missing``: the slot does not exist (dropped, or lost in an upgrade).
- ``slot_recreated``: the slot was dropped and created again (its epoch
  differs from the one stored with the offset; see `_epochs`).
- ``slot_lost``: the slot was invalidated (``wal_status = 'lost'``): the
  server refuses to stream from it.
- ``changes_skipped``: the slot's ``restart_lsn`` or ``confirmed_flush_lsn``
  is past the offset: the server would start streaming at the slot's
  position and silently skip every change in between.

It never deletes or moves anything (the seed service deleted its offsets on
every start "to avoid stale offsets"). `OffsetCheck.resolve` says what each
of Debezium's ``offset.mismatch.strategy`` values would do in this situation,
and `OffsetCheck.resume_point` returns the LSN to resume from under the
strategy you choose, or raises `OffsetNotSafe`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Literal

import outlast
from outlast import ConfigurationError, Hardening, OutlastError

from ._connect import Connection, Driver, Source
from ._epochs import DEFAULT_EPOCH_TABLE, quote_table, read_epoch
from ._model import ServerStatus, SlotStatus
from ._read import read_server, read_slots
from ._units import Lsn, LsnLike, format_bytes

__all__ = [
    "OffsetCheck",
    "OffsetNotSafe",
    "OffsetVerdict",
    "Resolution",
    "Strategy",
    "check_offset",
    "decide",
]

logger = logging.getLogger("outlast")


class OffsetVerdict(enum.Enum):
    """Whether a stored offset can be resumed from, and if not, why."""

    SAFE = "safe"
    OTHER_CLUSTER = "other_cluster"
    FROM_FUTURE = "from_future"
    SLOT_MISSING = "slot_missing"
    SLOT_RECREATED = "slot_recreated"
    SLOT_LOST = "slot_lost"
    CHANGES_SKIPPED = "changes_skipped"

    def __str__(self) -> str:
        return self.value


class Strategy(enum.Enum):
    """Debezium's ``offset.mismatch.strategy`` values (PostgreSQL connector)."""

    #: Start from the stored offset without comparing (the historical behaviour).
    NO_VALIDATION = "no_validation"
    #: The offset wins: advance a slot that is behind it; fail when the slot is ahead.
    TRUST_OFFSET = "trust_offset"
    #: The slot wins: when it is ahead, start from it (and accept the gap).
    TRUST_SLOT = "trust_slot"
    #: Whichever LSN is greater wins.
    TRUST_GREATER_LSN = "trust_greater_lsn"

    def __str__(self) -> str:
        return self.value


Action = Literal["resume", "advance_slot", "adopt_slot", "fail", "resnapshot"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """What a strategy does with this offset.

    `action`: ``resume`` (stream from `start_lsn`), ``advance_slot`` (move the
    slot up to the offset, then resume there), ``adopt_slot`` (resume from
    the slot's position instead of the offset), ``fail`` (refuse to start) or
    ``resnapshot`` (nothing to resume from: take a new snapshot).
    `loses_changes`: resuming this way skips changes; `silent`: without
    telling anyone.
    """

    strategy: Strategy
    action: Action
    start_lsn: Lsn | None
    loses_changes: bool
    silent: bool
    explanation: str


class OffsetNotSafe(OutlastError):
    """The chosen strategy cannot resume from the stored offset (see `check`)."""

    def __init__(self, message: str, *, check: OffsetCheck, resolution: Resolution) -> None:
        super().__init__(message)
        self.check = check
        self.resolution = resolution


@dataclass(frozen=True, slots=True, kw_only=True)
class OffsetCheck:
    """The answer of `check_offset`: the verdict, why, and the positions involved.

    `skipped_bytes`: how much WAL the server would skip if the consumer just
    resumed (slot position minus offset), when that is known.
    """

    slot: str
    stored_lsn: Lsn
    verdict: OffsetVerdict
    detail: str
    current_lsn: Lsn
    restart_lsn: Lsn | None = None
    confirmed_flush_lsn: Lsn | None = None
    skipped_bytes: int | None = None
    epoch: str | None = None
    system_identifier: str | None = None
    slot_status: SlotStatus | None = None

    @property
    def safe(self) -> bool:
        return self.verdict is OffsetVerdict.SAFE

    @property
    def slot_position(self) -> Lsn | None:
        """Where the server would start streaming for this slot (None: no usable slot)."""
        positions = [p for p in (self.restart_lsn, self.confirmed_flush_lsn) if p is not None]
        return max(positions) if positions else None

    def resolve(self, strategy: Strategy | str) -> Resolution:
        """What `strategy` (a `Strategy` or its Debezium name) would do here."""
        strategy = _strategy(strategy)
        return _resolve(self, strategy)

    def resolutions(self) -> dict[Strategy, Resolution]:
        """`resolve` for every strategy."""
        return {s: _resolve(self, s) for s in Strategy}

    def resume_point(self, strategy: Strategy | str = Strategy.TRUST_OFFSET) -> Lsn:
        """The LSN to resume streaming from under `strategy`, or `OffsetNotSafe`.

        The default, ``trust_offset``, never accepts a gap. Choosing
        ``trust_slot`` or ``trust_greater_lsn`` accepts one knowingly (the
        `Resolution` says how much was skipped). Whatever the strategy, this
        raises where it would lose changes silently, cannot resume, or has no
        position to resume from yet (a slot still to be created).
        """
        resolution = self.resolve(strategy)
        if (
            resolution.action in ("fail", "resnapshot")
            or resolution.silent
            or resolution.start_lsn is None
        ):
            raise OffsetNotSafe(
                f"cannot resume slot {self.slot!r} from {self.stored_lsn} with "
                f"{resolution.strategy}: {self.verdict}: {resolution.explanation}",
                check=self,
                resolution=resolution,
            )
        return resolution.start_lsn


def _strategy(value: Strategy | str) -> Strategy:
    if isinstance(value, Strategy):
        return value
    try:
        return Strategy(value)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise ConfigurationError(f"unknown strategy {value!r}; choose one of {names}") from None


def _resolve(check: OffsetCheck, strategy: Strategy) -> Resolution:
    stored, verdict = check.stored_lsn, check.verdict

    def r(action: Action, start: Lsn | None, loses: bool, silent: bool, why: str) -> Resolution:
        return Resolution(
            strategy=strategy,
            action=action,
            start_lsn=start,
            loses_changes=loses,
            silent=silent,
            explanation=why,
        )

    if verdict is OffsetVerdict.OTHER_CLUSTER:
        return r(
            "resnapshot",
            None,
            True,
            False,
            "the offset's LSN means nothing on another server: any comparison with this "
            "server's slot is meaningless",
        )
    if verdict is OffsetVerdict.SLOT_LOST:
        return r(
            "resnapshot",
            None,
            True,
            False,
            "the server refuses to stream from an invalidated slot: drop it, create a new "
            "one and take a new snapshot",
        )
    if verdict is OffsetVerdict.FROM_FUTURE:
        # Every strategy resumes at the offset (advancing the slot towards it, or not):
        # none can know the server went back in time.
        return r(
            "resume",
            stored,
            True,
            True,
            "resumes at the offset and silently skips every change the restored server "
            "writes below it; downstream also holds changes the server no longer has: "
            "reconcile and take a new snapshot",
        )
    if verdict is OffsetVerdict.SLOT_MISSING:
        if strategy is Strategy.TRUST_OFFSET:
            return r("fail", None, False, False, "refuses to start: a new slot would start now")
        if strategy is Strategy.NO_VALIDATION:
            return r(
                "resume",
                None,
                True,
                True,
                "creates a new slot at the current WAL position and streams from there: "
                "every change since the offset is lost, silently",
            )
        return r(
            "adopt_slot",
            None,
            True,
            False,
            "adopts a new slot created at the current WAL position: every change since the "
            "offset is lost unless a new snapshot is taken",
        )
    position = check.slot_position
    assert position is not None  # the slot exists and is not lost
    if position > stored:  # changes_skipped, or a recreated slot that moved on
        gap = f"skips {format_bytes(position - stored)} of WAL ({stored} to {position})"
        if strategy is Strategy.NO_VALIDATION:
            return r("resume", position, True, True, f"the server silently {gap}")
        if strategy is Strategy.TRUST_OFFSET:
            return r("fail", None, False, False, f"refuses to start: resuming {gap}")
        return r("adopt_slot", position, True, False, f"resumes from the slot and {gap}")
    if stored > position and strategy in (Strategy.TRUST_OFFSET, Strategy.TRUST_GREATER_LSN):
        return r(
            "advance_slot",
            stored,
            False,
            False,
            "advances the slot to the offset (pg_replication_slot_advance), then resumes",
        )
    return r("resume", stored, False, False, "resumes from the stored offset")


@dataclass(frozen=True, slots=True)
class _Facts:
    server: ServerStatus
    slot: SlotStatus | None
    registered_epoch: str | None


def decide(
    facts: _Facts,
    *,
    slot: str,
    stored: Lsn,
    epoch: str | None,
    system_identifier: str | None,
) -> OffsetCheck:
    """The verdict for `stored` given what the server said (pure; see the module doc)."""
    server, st = facts.server, facts.slot
    base: dict[str, Any] = {
        "slot": slot,
        "stored_lsn": stored,
        "current_lsn": server.current_lsn,
        "epoch": facts.registered_epoch,
        "system_identifier": server.system_identifier,
        "slot_status": st,
    }
    if st is not None:
        base["restart_lsn"] = st.restart_lsn
        base["confirmed_flush_lsn"] = st.confirmed_flush_lsn

    def verdict(v: OffsetVerdict, detail: str, skipped: int | None = None) -> OffsetCheck:
        return OffsetCheck(verdict=v, detail=detail, skipped_bytes=skipped, **base)

    if (
        system_identifier is not None
        and server.system_identifier is not None
        and str(system_identifier) != server.system_identifier
    ):
        return verdict(
            OffsetVerdict.OTHER_CLUSTER,
            f"the offset was stored against system {system_identifier}, "
            f"this server is {server.system_identifier}",
        )
    if stored > server.current_lsn:
        return verdict(
            OffsetVerdict.FROM_FUTURE,
            f"the offset {stored} is {format_bytes(stored - server.current_lsn)} ahead of the "
            f"server's WAL ({server.current_lsn}): restored from a backup, or another server",
        )
    if st is None:
        return verdict(OffsetVerdict.SLOT_MISSING, f"slot {slot!r} does not exist")
    position = max(p for p in (st.restart_lsn, st.confirmed_flush_lsn, Lsn(0)) if p is not None)
    skipped = max(0, position - stored)
    if epoch is not None and facts.registered_epoch != epoch:
        now = (
            f"its epoch is now {facts.registered_epoch}"
            if facts.registered_epoch is not None
            else "no epoch is registered for it any more"
        )
        return verdict(
            OffsetVerdict.SLOT_RECREATED,
            f"slot {slot!r} was dropped and created again since the offset was stored "
            f"(stored epoch {epoch}, {now})",
            skipped,
        )
    if st.invalidated:
        why = st.invalidation_reason or (
            "wal_status=lost" if st.wal_status == "lost" else "conflict"
        )
        return verdict(OffsetVerdict.SLOT_LOST, f"slot {slot!r} was invalidated ({why})")
    if st.restart_lsn is not None and stored < st.restart_lsn:
        return verdict(
            OffsetVerdict.CHANGES_SKIPPED,
            f"the slot's restart_lsn {st.restart_lsn} is past the offset {stored}: the WAL "
            f"between them is no longer kept",
            skipped,
        )
    if st.confirmed_flush_lsn is not None and stored < st.confirmed_flush_lsn:
        return verdict(
            OffsetVerdict.CHANGES_SKIPPED,
            f"the slot's confirmed_flush_lsn {st.confirmed_flush_lsn} is past the offset "
            f"{stored}: the server would start there and skip "
            f"{format_bytes(st.confirmed_flush_lsn - stored)} of WAL",
            skipped,
        )
    return verdict(OffsetVerdict.SAFE, f"slot {slot!r} holds every change after {stored}", 0)


def _log(check: OffsetCheck) -> None:
    extra = {
        "outlast_event": "offset_ok" if check.safe else "offset_stale",
        "slot": check.slot,
        "verdict": str(check.verdict),
        "stored_lsn": str(check.stored_lsn),
        "skipped_bytes": check.skipped_bytes,
    }
    if check.safe:
        logger.info(
            "[OFFSET_OK] slot=%s stored=%s slot_at=%s",
            check.slot,
            check.stored_lsn,
            check.slot_position,
            extra=extra,
        )
    else:
        logger.error(
            "[OFFSET_STALE] slot=%s stored=%s verdict=%s skipped=%s why=%s",
            check.slot,
            check.stored_lsn,
            check.verdict,
            format_bytes(check.skipped_bytes),
            check.detail,
            extra=extra,
        )


def check_offset(
    source: Source,
    *,
    slot: str,
    lsn: LsnLike,
    epoch: str | None = None,
    system_identifier: str | int | None = None,
    guard: outlast.Guard | None = None,
    preset: str | Hardening = "default",
    driver: Driver = "auto",
    epoch_table: str = DEFAULT_EPOCH_TABLE,
    log: bool = True,
) -> OffsetCheck:
    """Say whether a consumer may resume `slot` from its stored offset `lsn`.

    Call it at start-up, before streaming. `epoch` and `system_identifier`
    are the values of `slot_identity` you stored with the offset (optional:
    without them a recreated slot or a different server is still caught by
    the LSN comparisons, only not named). Reads go through `guard` (retried
    during an outage). Logs ``[OFFSET_STALE]`` (or ``[OFFSET_OK]``) unless
    ``log=False``. Deletes nothing, moves nothing.
    """
    if not isinstance(slot, str) or not slot:
        raise ConfigurationError("slot must be a slot name")
    stored = Lsn.parse(lsn)
    if epoch is not None:
        quote_table(epoch_table)
    conn = Connection(source, preset=preset, driver=driver)
    guard = guard if guard is not None else outlast.Guard("replication")

    def facts(c: Any) -> _Facts:
        server = read_server(c)
        st = next((s for s in read_slots(c, server) if s.name == slot), None)
        registered = None
        if epoch is not None:
            found = read_epoch(c, epoch_table, slot)
            registered = None if found is None else found[0]
        return _Facts(server, st, registered)

    try:
        found = guard.call(lambda: conn.run(facts), idempotent=True, op="replication.check_offset")
    finally:
        conn.close()
    result = decide(
        found,
        slot=slot,
        stored=stored,
        epoch=epoch,
        system_identifier=None if system_identifier is None else str(system_identifier),
    )
    if log:
        _log(result)
    return result
