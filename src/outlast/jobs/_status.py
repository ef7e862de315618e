"""What ``outlast jobs status`` shows: depth per kind, oldest job, slots per key, dead letters."""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from ._schema import check_schema_name

__all__ = ["KindStatus", "QueueStatus", "astatus", "status"]

_TOP_KEYS = 20
_DEAD_SHOWN = 10


@dataclass(frozen=True)
class KindStatus:
    """One kind: jobs ready now, scheduled later, running, with expired leases, dead."""

    kind: str
    ready: int
    scheduled: int
    running: int
    expired_leases: int
    dead: int
    cancelled: int
    oldest_ready_age: float | None  # seconds the oldest ready job has waited


@dataclass(frozen=True)
class QueueStatus:
    """A snapshot of a queue (`status` / ``outlast jobs status``)."""

    schema: str
    kinds: list[KindStatus]
    slots: list[dict[str, Any]]  # the busiest keys: kind, key, in_use
    slots_in_use: int
    leases: list[dict[str, Any]]  # outlast.jobs.Slots holders per name/key
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """A plain-text table for terminals."""
        lines = [f"queue {self.schema}"]
        lines.append(
            f"{'kind':<24}{'ready':>8}{'later':>8}{'running':>9}{'expired':>9}{'dead':>7}"
            f"{'oldest':>10}"
        )
        for k in self.kinds:
            age = "-" if k.oldest_ready_age is None else f"{k.oldest_ready_age:.1f}s"
            lines.append(
                f"{k.kind:<24}{k.ready:>8}{k.scheduled:>8}{k.running:>9}{k.expired_leases:>9}"
                f"{k.dead:>7}{age:>10}"
            )
        if not self.kinds:
            lines.append("(no jobs)")
        lines.append(f"slots in use: {self.slots_in_use}")
        for s in self.slots:
            lines.append(f"  {s['kind']} key={s['key']}: {s['in_use']}")
        for lease in self.leases:
            lines.append(
                f"  Slots {lease['name']} key={lease['key']}: {lease['held']}"
                f" (expired {lease['expired']})"
            )
        if self.dead_letters:
            lines.append("dead letters (newest first):")
            for d in self.dead_letters:
                lines.append(
                    f"  job={d['id']} {d['kind']} key={d['key']} attempts={d['attempts']}"
                    f" err={d['error']}"
                )
        return "\n".join(lines)


def _queries(s: str) -> list[str]:
    return [
        f"""
        SELECT kind,
               count(*) FILTER (WHERE state = 'queued' AND run_at <= now()),
               count(*) FILTER (WHERE state = 'queued' AND run_at > now()),
               count(*) FILTER (WHERE state = 'running'),
               count(*) FILTER (WHERE state = 'running' AND lease_until < now()),
               count(*) FILTER (WHERE state = 'failed'),
               count(*) FILTER (WHERE state = 'cancelled'),
               extract(epoch FROM now() - min(run_at)
                       FILTER (WHERE state = 'queued' AND run_at <= now()))::float8
        FROM {s}.jobs GROUP BY kind ORDER BY kind
        """,
        f"""SELECT kind, key, count(*) FROM {s}.slots GROUP BY kind, key
            ORDER BY count(*) DESC, kind, key LIMIT {_TOP_KEYS}""",
        f"SELECT count(*) FROM {s}.slots",
        f"""SELECT name, key, count(*), count(*) FILTER (WHERE lease_until < now())
            FROM {s}.leases GROUP BY name, key ORDER BY count(*) DESC LIMIT {_TOP_KEYS}""",
        f"""SELECT id, kind, key, attempts, last_error, finished_at FROM {s}.jobs
            WHERE state = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT {_DEAD_SHOWN}""",
    ]


def _build(s: str, answers: list[list[tuple[Any, ...]]]) -> QueueStatus:
    kinds = [
        KindStatus(
            kind=r[0],
            ready=int(r[1]),
            scheduled=int(r[2]),
            running=int(r[3]),
            expired_leases=int(r[4]),
            dead=int(r[5]),
            cancelled=int(r[6]),
            oldest_ready_age=r[7],
        )
        for r in answers[0]
    ]
    slots = [{"kind": r[0], "key": r[1], "in_use": int(r[2])} for r in answers[1]]
    leases = [
        {"name": r[0], "key": r[1], "held": int(r[2]), "expired": int(r[3])} for r in answers[3]
    ]
    dead = [
        {
            "id": r[0],
            "kind": r[1],
            "key": r[2],
            "attempts": r[3],
            "error": r[4],
            "finished_at": r[5].isoformat() if isinstance(r[5], datetime.datetime) else None,
        }
        for r in answers[4]
    ]
    return QueueStatus(s, kinds, slots, int(answers[2][0][0]), leases, dead)


def status(conn: Any, *, schema: str = "outlast_jobs") -> QueueStatus:
    """The queue's status, read on a psycopg connection (read-only queries)."""
    s = check_schema_name(schema)
    return _build(s, [list(conn.execute(q).fetchall()) for q in _queries(s)])


async def astatus(conn: Any, *, schema: str = "outlast_jobs") -> QueueStatus:
    """The asyncio twin of `status`."""
    s = check_schema_name(schema)
    answers = []
    for q in _queries(s):
        cur = await conn.execute(q)
        answers.append(list(await cur.fetchall()))
    return _build(s, answers)
