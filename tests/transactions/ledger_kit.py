"""A Jepsen-style write ledger for ``Guard.transaction``, with faults from the chaos proxy.

The ledger's transactions run through the public API (``guard.transaction`` /
``guard.atransaction``) on outlast's hardened factories, connected through the
chaos proxy. The application function itself breaks the link, with the
proxy's own faults, at a point drawn for each attempt from a seeded RNG:

- ``before`` / ``middle``: the link dies just before, or just after, the
  function's INSERT: closed (FIN), reset (RST) or ended by a FATAL 57P01 from
  the proxy, at random. The server rolls back; the whole function runs again.
- ``reply_lost``: a one-shot ``cut_after`` on COMMIT: the proxy forwards the
  COMMIT, the server commits, and its reply never comes back. The outcome
  must be resolved as *committed*: the function is not run again.
- ``cut_early``: the same with ``wait_reply=False``: the client's side is
  closed as soon as the COMMIT has been forwarded. Committed too.
- ``doomed``: the row breaks a deferred foreign key, so the server *aborts*
  at COMMIT, and the same cut drops its ErrorResponse. The outcome must be
  resolved as *aborted*: the function runs again (and commits next time).

The proxy cannot swallow a COMMIT before the server sees it (``cut_after``
forwards the message, then cuts), so "doomed" stands in for a COMMIT that
never took effect, with a real abort on the real server.

The ledger records what each attempt drew and how each call ended (ok,
unknown, failed); `check_ledger` reads the table back (no UNIQUE constraint,
so a double write shows) and compares.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

CUT_COMMIT = r"^\s*COMMIT"
FAULT_MIX = {"before": 0.03, "middle": 0.03, "reply_lost": 0.04, "cut_early": 0.02, "doomed": 0.03}
LINK_KILLS = ("close", "reset", "terminate")
COMMIT_CUTS = frozenset({"reply_lost", "cut_early", "doomed"})

SCHEMA = (
    "CREATE TABLE ledger_doom (id int PRIMARY KEY)",  # stays empty
    # Deliberately no PRIMARY KEY / UNIQUE on id: a double write must show up.
    "CREATE TABLE ledger (id bigint NOT NULL, attempt int NOT NULL,"
    " doom int REFERENCES ledger_doom (id) DEFERRABLE INITIALLY DEFERRED)",
)


@dataclass
class Ledger:
    outcome: dict[int, str] = field(default_factory=dict)
    # Per id, what each attempt of the function drew ("none" or a FAULT_MIX key).
    attempts: dict[int, list[str]] = field(default_factory=dict)
    injected: Counter[str] = field(default_factory=Counter)
    unfired: int = 0  # armed COMMIT cuts that never fired (no COMMIT was sent)
    slowest: float = 0.0  # seconds, the longest call

    def counts(self) -> Counter[str]:
        return Counter(self.outcome.values())

    def resolutions(self) -> Counter[str]:
        """COMMITs that were cut and then answered by ``pg_xact_status``.

        Read off behaviour: a cut COMMIT of a committed transaction that was
        the last attempt of a call that returned was resolved *committed*; a
        cut COMMIT of a doomed attempt followed by another attempt was
        resolved *aborted*. (Any other answer shows up in `check_ledger` as a
        double or a lost write, or as ``CommitOutcomeUnknown``.)
        """
        out: Counter[str] = Counter()
        for i, drawn in self.attempts.items():
            if self.outcome.get(i) != "ok":
                continue
            last = len(drawn) - 1
            for k, kind in enumerate(drawn):
                if kind in ("reply_lost", "cut_early") and k == last:
                    out["committed"] += 1
                elif kind == "doomed" and k < last:
                    out["aborted"] += 1
        return out


class Injector:
    """Draws a fault per attempt and strikes it through the proxy, from inside ``fn``."""

    def __init__(self, proxy: Any, rng: random.Random, ledger: Ledger) -> None:
        self.proxy = proxy
        self.rng = rng
        self.ledger = ledger

    def draw(self, i: int) -> tuple[str, int]:
        """This attempt's fault and its number (1-based)."""
        roll = self.rng.random()
        kind = "none"
        for name, share in FAULT_MIX.items():
            if roll < share:
                kind = name
                self.ledger.injected[name] += 1
                break
            roll -= share
        drawn = self.ledger.attempts.setdefault(i, [])
        drawn.append(kind)
        return kind, len(drawn)

    def kill_link(self) -> None:
        how = self.rng.choice(LINK_KILLS)
        self.ledger.injected[f"link_{how}"] += 1
        if how == "close":
            self.proxy.close_connections()
            return
        # Both act on the live connections when added; new ones must not be refused.
        fault = self.proxy.add_fault(how)
        self.proxy.remove_fault(fault)

    def arm_commit_cut(self, kind: str) -> None:
        self.proxy.add_fault(
            "cut_after", pattern=CUT_COMMIT, wait_reply=kind != "cut_early", count=1
        )

    def settle(self) -> None:
        """After a call: an armed cut still there never saw its COMMIT; start clean."""
        left = self.proxy.faults()
        if left:
            self.ledger.unfired += sum(1 for f in left if f["type"] == "cut_after")
            self.proxy.clear()


def check_ledger(ledger: Ledger, rows: dict[int, tuple[int, int]]) -> None:
    """Every acknowledged write present once, by its last attempt; nothing doubled or invented.

    `rows` maps id -> (row count, highest attempt number among its rows).
    """
    doubles = {i: n for i, (n, _) in rows.items() if n > 1}
    assert not doubles, f"written more than once: {sorted(doubles)[:10]}"
    invented = set(rows) - set(ledger.outcome)
    assert not invented, f"rows nobody wrote: {sorted(invented)[:10]}"
    lost = [i for i, o in ledger.outcome.items() if o == "ok" and i not in rows]
    assert not lost, f"acknowledged but missing: {lost[:10]}"
    # The row of an acknowledged call is the one its last attempt wrote: an
    # earlier attempt's row would mean a COMMIT resolved wrongly (or re-sent).
    stale = [
        i for i, o in ledger.outcome.items() if o == "ok" and rows[i][1] != len(ledger.attempts[i])
    ]
    assert not stale, f"committed by an earlier attempt than the last: {stale[:10]}"
    phantom = [i for i, o in ledger.outcome.items() if o == "failed" and i in rows]
    assert not phantom, f"reported failed but written: {phantom[:10]}"
