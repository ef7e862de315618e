"""What the probe test services share: their Guard, the gated query, a request counter.

Each service's database routes query the database directly (an engine or the
ORM, never ``web.call``), so only the integration's admission stands between
a half-open breaker and a stampede. ``GET /api/hold`` runs `HOLD_SQL`, which
waits for a shared advisory lock: while the test holds the lock exclusively,
the database is "slow to answer the probe", for as long as the test likes.
Settings come from the environment: ``DATABASE_URL``, ``PROBE_TAG`` (a comment
put in the query, to find it in ``pg_stat_activity``), ``PROBE_LOCK`` (the lock
key), ``OUTLAST_BUDGET``.
"""

from __future__ import annotations

import os
import threading

import outlast

DATABASE_URL = os.environ["DATABASE_URL"]
TAG = os.environ["PROBE_TAG"]
LOCK = int(os.environ["PROBE_LOCK"])
BUDGET = float(os.environ.get("OUTLAST_BUDGET", "5"))
OPEN_FOR = 0.5
# Longer than a loaded machine may take to answer the other requests of a
# burst, so that the probe is still waiting in the database when they are in.
STATEMENT_TIMEOUT_MS = 9000

# A transaction-level lock: released when the request's transaction ends,
# whatever happens to the request.
HOLD_SQL = f"SELECT /* {TAG} */ pg_advisory_xact_lock_shared({LOCK})"

# One failure opens the breaker (for OPEN_FOR, never longer). probe_timeout is
# long, so a probe slot that leaked could not be hidden by the stuck-probe
# replacement during a test.
guard = outlast.Guard(
    "probe",
    retry=outlast.Retry(attempts=1),
    breaker=outlast.Breaker(
        failure_threshold=1, open_for=OPEN_FOR, max_open_for=OPEN_FOR, probe_timeout=600
    ),
)


class Counter:
    """How many requests entered a database view (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1


entered = Counter()


def stats() -> dict[str, object]:
    return {"entered": entered.value, "breaker": guard.breaker_state}


class Unrelated(Exception):
    """A bug in a view: nothing to do with the database."""
