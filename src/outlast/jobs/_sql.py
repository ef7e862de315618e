"""The queue's statements, one per decision, each a single round trip.

Why they look the way they do:

- **claim** reclaims and claims in one statement. Jobs whose lease expired are
  taken over by a conditional update (the state, attempt and lease it read),
  so a live worker's heartbeat that landed in between wins and a finished job
  is never touched; a reclaimed job keeps its slot (the dead holder's slot
  passes to the new attempt without going through the gate) and frees it when
  it finishes. A job that expired on its last attempt goes to the dead letters
  and frees its slot. After a server restart nobody could heartbeat, so leases
  count from the server's start as well. Waiting jobs are picked with
  ``FOR UPDATE SKIP LOCKED`` in priority order, skipping keys whose slots are
  all taken; limited jobs then insert numbered slots with ``ON CONFLICT DO
  NOTHING``: a slot another worker took a moment ago (even uncommitted) makes
  that job stay queued for the next claim instead of running over the limit.
- **settle** finishes a batch of attempts (done, retry later, dead letter,
  cancelled) and releases their slots in the same statement; each row applies
  only if that attempt still holds the job.
- **heartbeat** pushes the leases of the attempts a worker still holds and
  reports which were cancelled or lost.
"""

from __future__ import annotations

__all__ = [
    "claim_sql",
    "enqueue_sql",
    "forget_sql",
    "heartbeat_sql",
    "settle_sql",
]

# Parameters of claim: worker, lease seconds, kinds, limits (jsonb), capacity, scan.


def claim_sql(s: str) -> str:
    """Reclaim expired attempts and claim waiting jobs, up to a capacity."""
    return f"""
WITH expired AS (
    SELECT j.id, j.kind, j.key, j.slot, j.attempts, j.max_attempts, j.lease_until, j.worker
    FROM {s}.jobs j
    WHERE j.state = 'running' AND j.lease_until < now() AND j.kind = ANY(%(kinds)s)
      AND pg_postmaster_start_time() + %(lease)s * interval '1 second' < now()
    ORDER BY j.lease_until
    LIMIT %(capacity)s
    FOR UPDATE SKIP LOCKED
),
buried AS (
    UPDATE {s}.jobs j
    SET state = 'failed', finished_at = now(), slot = NULL, lease_until = NULL,
        last_error = 'lease expired on the last attempt (worker ' || coalesce(e.worker, '?') || ')'
    FROM expired e
    WHERE j.id = e.id AND e.attempts >= e.max_attempts
      AND j.state = 'running' AND j.attempts = e.attempts AND j.lease_until = e.lease_until
    RETURNING j.id, e.kind, e.key, e.slot
),
unslotted AS (
    DELETE FROM {s}.slots t USING buried b
    WHERE t.kind = b.kind AND t.key = b.key AND t.n = b.slot AND t.job_id = b.id
    RETURNING t.job_id
),
again AS (
    SELECT e.id, e.slot AS n, true AS reclaimed, e.worker AS prev, e.attempts, e.lease_until
    FROM expired e WHERE e.attempts < e.max_attempts
),
held AS (
    SELECT t.kind, t.key, count(*)::integer AS used FROM {s}.slots t
    WHERE t.kind = ANY(%(kinds)s) GROUP BY t.kind, t.key
),
pre AS (
    SELECT j.id, j.kind, j.key, j.priority, j.run_at,
           (%(limits)s::jsonb ->> j.kind)::integer AS lim
    FROM {s}.jobs j
    WHERE j.state = 'queued' AND j.run_at <= now() AND j.kind = ANY(%(kinds)s)
      AND (j.key IS NULL OR NOT EXISTS (
          SELECT 1 FROM held h WHERE h.kind = j.kind AND h.key = j.key
            AND h.used >= (%(limits)s::jsonb ->> j.kind)::integer))
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT %(scan)s
),
pick AS (
    SELECT c.id FROM (
        SELECT p.*, row_number() OVER (
                   PARTITION BY p.kind, p.key ORDER BY p.priority DESC, p.run_at, p.id) AS rn,
               coalesce(h.used, 0) AS used
        FROM pre p LEFT JOIN held h ON h.kind = p.kind AND h.key = p.key
    ) c
    WHERE c.key IS NULL OR c.lim IS NULL OR c.rn <= c.lim - c.used
    ORDER BY c.priority DESC, c.run_at, c.id
    LIMIT greatest(0, %(capacity)s - (SELECT count(*) FROM again))
),
cand AS (
    SELECT j.id, j.kind, j.key, j.priority, j.run_at,
           (%(limits)s::jsonb ->> j.kind)::integer AS lim
    FROM {s}.jobs j
    WHERE j.id IN (SELECT id FROM pick) AND j.state = 'queued'
    FOR UPDATE OF j SKIP LOCKED
),
ranked AS (
    SELECT c.*, row_number() OVER (
        PARTITION BY c.kind, c.key ORDER BY c.priority DESC, c.run_at, c.id) AS rn
    FROM cand c
),
free AS (
    SELECT k.kind, k.key, g.n, row_number() OVER (PARTITION BY k.kind, k.key ORDER BY g.n) AS fn
    FROM (SELECT DISTINCT kind, key, lim FROM ranked
          WHERE lim IS NOT NULL AND key IS NOT NULL) k
    CROSS JOIN LATERAL generate_series(1, k.lim) AS g(n)
    WHERE NOT EXISTS (
        SELECT 1 FROM {s}.slots t WHERE t.kind = k.kind AND t.key = k.key AND t.n = g.n)
),
took AS (
    INSERT INTO {s}.slots (kind, key, n, job_id)
    SELECT r.kind, r.key, f.n, r.id
    FROM ranked r JOIN free f ON f.kind = r.kind AND f.key = r.key AND f.fn = r.rn
    ON CONFLICT DO NOTHING
    RETURNING job_id, n
),
go AS (
    SELECT id, NULL::integer AS n, false AS reclaimed, NULL::text AS prev,
           NULL::integer AS attempts, NULL::timestamptz AS lease_until
    FROM ranked WHERE lim IS NULL OR key IS NULL
    UNION ALL
    SELECT job_id, n, false, NULL, NULL, NULL FROM took
    UNION ALL
    SELECT id, n, reclaimed, prev, attempts, lease_until FROM again
),
upd AS (
    UPDATE {s}.jobs j
    SET state = 'running', attempts = j.attempts + 1, worker = %(worker)s,
        lease_until = now() + %(lease)s * interval '1 second', slot = go.n,
        started_at = now(), cancel_requested = false
    FROM go
    WHERE j.id = go.id
      AND (NOT go.reclaimed OR (j.state = 'running' AND j.attempts = go.attempts
                                AND j.lease_until = go.lease_until))
    RETURNING j.id, j.kind, j.key, j.payload, j.attempts, j.max_attempts, j.slot, j.priority,
              j.created_at, go.reclaimed, go.prev
)
-- Always one row at least: the last two columns say how far the scan got and how
-- many jobs went to the dead letters, even when nothing was claimed.
SELECT u.*, (SELECT count(*) FROM pre) AS scanned, (SELECT count(*) FROM unslotted) AS buried
FROM (SELECT 1) AS one LEFT JOIN upd u ON true
"""


def settle_sql(s: str, *, keep_done: bool) -> str:
    """Finish attempts: ``done``, ``retry`` / ``release`` (queued again after ``delay`` s),
    ``failed`` (dead letter) or ``cancelled``.

    Parameters: ids, attempts, outcomes, delays, errors (arrays of one length).
    Returns one row per attempt that still held its job, with the slot it freed.
    """
    done_state = "'done'" if keep_done else "NULL"
    return f"""
WITH c AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(outcomes)s::text[],
                         %(delays)s::float8[], %(errors)s::text[])
        AS c(id, attempt, outcome, delay, error)
),
held AS (
    SELECT j.id, j.kind, j.key, j.slot FROM {s}.jobs j JOIN c ON c.id = j.id
    WHERE j.state = 'running' AND j.attempts = c.attempt AND j.worker = %(worker)s
),
gone AS (
    DELETE FROM {s}.jobs j USING c
    WHERE {done_state} IS NULL AND c.outcome = 'done'
      AND j.id = c.id AND j.state = 'running' AND j.attempts = c.attempt
      AND j.worker = %(worker)s
    RETURNING j.id
),
moved AS (
    UPDATE {s}.jobs j
    SET state = CASE WHEN c.outcome IN ('retry', 'release') THEN 'queued' ELSE c.outcome END,
        run_at = CASE WHEN c.outcome IN ('retry', 'release')
                      THEN now() + c.delay * interval '1 second' ELSE j.run_at END,
        finished_at = CASE WHEN c.outcome IN ('retry', 'release') THEN NULL ELSE now() END,
        -- A released attempt (shutdown) did not fail: it does not use up a try.
        max_attempts = j.max_attempts + (c.outcome = 'release')::integer,
        worker = NULL,
        last_error = coalesce(c.error, j.last_error),
        slot = NULL, lease_until = NULL, cancel_requested = false
    FROM c
    WHERE NOT ({done_state} IS NULL AND c.outcome = 'done')
      AND j.id = c.id AND j.state = 'running' AND j.attempts = c.attempt
      AND j.worker = %(worker)s
    RETURNING j.id
),
settled AS (SELECT id FROM gone UNION ALL SELECT id FROM moved),
freed AS (
    DELETE FROM {s}.slots t USING held h, settled x
    WHERE x.id = h.id AND h.slot IS NOT NULL
      AND t.kind = h.kind AND t.key = h.key AND t.n = h.slot AND t.job_id = h.id
    RETURNING t.job_id, t.n
),
woke AS (SELECT pg_notify(%(channel)s, 'slot') FROM (SELECT 1 FROM freed LIMIT 1) one)
SELECT x.id, f.n, (SELECT count(*) FROM woke)
FROM settled x LEFT JOIN freed f ON f.job_id = x.id
"""


def heartbeat_sql(s: str) -> str:
    """Push the leases of held attempts; return them with their cancel flag."""
    return f"""
UPDATE {s}.jobs j SET lease_until = now() + %(lease)s * interval '1 second'
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS c(id, attempt)
WHERE j.id = c.id AND j.attempts = c.attempt AND j.state = 'running' AND j.worker = %(worker)s
RETURNING j.id, j.cancel_requested
"""


def forget_sql(s: str) -> str:
    """Put back this worker's running jobs that it does not know it holds.

    After a claim whose answer was lost with the connection, the rows it
    claimed are ours on the server but not in memory; this returns them to the
    queue (that attempt does not use up a try) and frees their slots instead of waiting for
    their leases to expire.
    """
    return f"""
WITH lost AS (
    UPDATE {s}.jobs j
    SET state = 'queued', max_attempts = j.max_attempts + 1, slot = NULL,
        lease_until = NULL, worker = NULL
    FROM (SELECT id, kind, key, slot, attempts FROM {s}.jobs
          WHERE state = 'running' AND worker = %(worker)s AND NOT (id = ANY(%(known)s))
          FOR UPDATE) o
    WHERE j.id = o.id AND j.state = 'running' AND j.attempts = o.attempts
    RETURNING j.id, o.kind, o.key, o.slot
),
freed AS (
    DELETE FROM {s}.slots t USING lost l
    WHERE t.kind = l.kind AND t.key = l.key AND t.n = l.slot AND t.job_id = l.id
)
SELECT count(*) FROM lost
"""


def enqueue_sql(s: str, rows: int, *, placeholder: str = "%s") -> str:
    """INSERT `rows` jobs; one NOTIFY per statement that inserted something.

    Positional parameters, eight per row (kind, key, payload as JSON text,
    priority, run_at or NULL, delay in seconds or NULL, max_attempts, dedupe),
    then the channel. `placeholder` is ``%s`` (psycopg, psycopg2, Django) or
    ``$`` (asyncpg's numbered ``$1``). Rows come back in the order given,
    without those a live job with the same dedupe key turned away.
    """
    numbers = iter(range(1, 8 * rows + 2))

    def p(cast: str) -> str:
        mark = placeholder if placeholder != "$" else f"${next(numbers)}"
        return f"{mark}{cast}"

    values = []
    for _ in range(rows):
        kind, key, payload = p("::text"), p("::text"), p("::jsonb")
        priority, run_at, delay = p("::integer"), p("::timestamptz"), p("::float8")
        attempts, dedupe = p("::integer"), p("::text")
        values.append(
            f"({kind}, {key}, {payload}, {priority},"
            f" coalesce({run_at}, now() + coalesce({delay}, 0) * interval '1 second'),"
            f" {attempts}, {dedupe})"
        )
    channel = p("::text")
    return f"""
WITH ins AS (
    INSERT INTO {s}.jobs (kind, key, payload, priority, run_at, max_attempts, dedupe)
    VALUES {", ".join(values)}
    ON CONFLICT (kind, dedupe) WHERE dedupe IS NOT NULL AND state IN ('queued', 'running')
    DO NOTHING
    RETURNING id, kind, dedupe
),
woke AS (SELECT pg_notify({channel}, 'new') FROM (SELECT 1 FROM ins LIMIT 1) one)
SELECT id, kind, dedupe, (SELECT count(*) FROM woke) FROM ins
"""
