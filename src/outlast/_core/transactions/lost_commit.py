"""Resolve the lost COMMIT of an ordinary transaction (one outlast did not run itself).

``Guard.transaction`` owns its transactions: it reads the transaction's id
before COMMIT and, when the connection dies with the COMMIT in flight, asks
``pg_xact_status()`` on a fresh connection (`machine`). Applications mostly
commit on their own -- ``session.commit()`` in a FastAPI dependency, Flask-
SQLAlchemy's ``db.session.commit()`` -- and a hardened engine sees those
COMMITs too. `resolve_lost_commit` gives them the same answer with the same
algorithm (`machine._resolve`, shared, not copied): committed, aborted, or
`CommitOutcomeUnknown` when nobody can tell within the timeout. What it
cannot do is re-run the work: the application's code is not a function outlast
holds, so an aborted COMMIT is reported as "not applied" (a 503 that is safe
to retry), never replayed.

The caller supplies how to ask (``ask(command) -> StatusReply | Exception``)
and how to sleep, so one loop serves a blocking driver (the question in a
short-lived thread, as `machine._ask` does) and SQLAlchemy's asyncio layer
(the question asked in its greenlet, the sleep awaited on the event loop).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from outlast._core.faults.fault import Fault, FaultKind

from .adapters import GuardLike
from .machine import _UNKNOWN_AT_COMMIT, _Ask, _clock, _Outcome, _resolve, _Sleep

__all__ = ["UNKNOWN_AT_COMMIT", "Ask", "resolve_lost_commit"]

#: Faults that, raised by COMMIT itself, leave its outcome unknown (a lost
#: link, a client-side timeout); an error the server *answered* means it rolled back.
UNKNOWN_AT_COMMIT: frozenset[FaultKind] = _UNKNOWN_AT_COMMIT

Ask = Callable[[_Ask], object]


def resolve_lost_commit(
    guard: GuardLike,
    exc: Exception,
    fault: Fault,
    *,
    xid: str,
    started: str | None,
    timeout: float | None,
    ask: Ask,
    sleep: Callable[[float], None],
    op: str | None = "commit",
) -> bool:
    """True when the lost COMMIT of transaction `xid` committed, False when it did not.

    `exc` is what the COMMIT raised and `fault` its classification (a kind in
    `UNKNOWN_AT_COMMIT`); `started` the server's start time read with the
    xid (a ``committed`` answer from a server that restarted since is not
    trusted). Asks again with the Guard's backoff until `timeout` seconds
    (None: about the Guard's retry timeout) have passed, then raises
    `CommitOutcomeUnknown` (with ``.xid``), as it does for an answer that
    cannot be trusted.
    """
    clock = _clock(guard)
    now = clock.monotonic
    machine = _resolve(
        guard,
        op,
        timeout=timeout,
        outcome=_Outcome("commit", error=exc, xid=xid, started=started),
        fault=fault,
        exc=exc,
        now=now,
        rand=random.random,
        first_failure=now(),
    )
    reply: object = None
    while True:
        try:
            command = machine.send(reply)
        except StopIteration as stop:
            return bool(stop.value)
        if isinstance(command, _Sleep):
            sleep(command.seconds)
            reply = None
        elif isinstance(command, _Ask):
            reply = ask(command)
        else:  # pragma: no cover - _resolve never asks for an attempt
            raise AssertionError(f"unexpected command {command!r}")
