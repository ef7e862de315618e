"""`run`: bring the schema to its target exactly once, whatever number of processes start.

Every process runs the same loop, against a client-side deadline:

1. read the schema's state without any lock (`Runner.state`); at the target
   -> ready at once (followers never queue for a lock they do not need);
2. role ``wait`` -> poll again after a jittered interval;
3. role ``migrate`` -> ``try`` the lock once (never a blocking lock call);
   held by someone else -> name the holder, poll again;
4. the holder re-reads the state under the lock, terminates DDL sessions
   orphaned by earlier leaders, applies what is pending on a connection of
   its own with a per-statement fence, reads the state again, and releases
   the lock on the session that took it, checking the release.

A database that is down, restarting or refusing logins is waited out (the
reason is logged), as is a leader that loses its lock mid-way (its
transactional step was rolled back; whoever takes the lock next finishes).
Only a migration's own error (exit code 3 in the CLI) ends the run early.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import outlast
from outlast import ConfigurationError, FaultKind, classify
from outlast._core.connections.socket_deadline import socket_deadline

from ._advisory import AdvisoryLock, advisory_key
from ._errors import MigrationError, MigrationFailed, MigrationLockLost, MigrationTimeout
from ._holder import Holder, holder_id
from ._lease import DEFAULT_TABLE, LeaseLock
from ._runner import ApplyContext, Runner
from ._session import LockSession
from ._settings import Settings, dsn_from_env, env_lock_dsn
from ._state import SchemaState
from ._status import SchemaStatus

__all__ = ["run"]

logger = logging.getLogger("outlast.migrate")

_LOG_EVERY = 10.0  # seconds between repeated "waiting" lines for the same reason
_MAX_CONFLICTS = 3  # lock_timeout / deadlock retries of the whole apply
_MAX_BACKOFF = 2.0


def _s(seconds: float) -> str:
    return f"{seconds:.1f}"


def run(
    runner: Runner,
    *,
    dsn: str | None = None,
    lock_dsn: str | None = None,
    role: str | None = None,
    wait: float | timedelta | None = None,
    on_timeout: str = "fail",
    lock: str | None = None,
    name: str = "default",
    lease: float | timedelta = 10.0,
    poll: float | timedelta = 0.5,
    connect_timeout: float | timedelta = 5.0,
    lock_timeout: float | timedelta | None = None,
    statement_timeout: float | timedelta | None = None,
    lease_table: str = DEFAULT_TABLE,
) -> SchemaStatus:
    """Bring the schema to the runner's target exactly once across every process.

    - `runner`: `AlembicRunner`, `DjangoRunner`, `SqlRunner` or your own.
    - `dsn`: the database (default: what the runner is configured with, then
      ``OUTLAST_DSN``, then ``DATABASE_URL``).
    - `lock_dsn`: a *direct* endpoint for the lock session when `dsn` goes
      through a pooler (default: ``OUTLAST_MIGRATE_LOCK_DSN``, then `dsn`).
    - `role`: ``"migrate"`` (may take the lock and migrate) or ``"wait"``
      (only waits for the schema); default from ``OUTLAST_MIGRATE`` /
      ``RUN_MIGRATIONS`` (1 / 0), else ``"migrate"``.
    - `wait`: seconds to reach the target (default ``OUTLAST_MIGRATE_WAIT`` or 120).
    - `on_timeout`: ``"fail"`` raises `MigrationTimeout` (naming the lock's
      holder); ``"unready"`` returns a `SchemaStatus` that is not ready and
      keeps trying in a background thread (for ``/health/ready``).
    - `lock`: ``"advisory"`` (default; a session lock on a direct connection)
      or ``"lease"`` (a lease row, works through PgBouncer in transaction
      mode); every process must use the same. `name`: the lock's name.
    - `lease`: how long a silent holder keeps the lock (it heartbeats every
      quarter of it; the server drops its session after it). `poll`: seconds
      between checks while waiting (jittered).
    - `lock_timeout` / `statement_timeout`: set on the DDL connection, and only
      there, once the lock is held (default: the server's settings).
    - `lease_table`: the lease mode's table (``outlast_migrate_lease``).

    Raises `ConfigurationError` for bad options (`LockNotSupported` for a
    pooler), `MigrationTimeout`, `MigrationFailed` for a migration's own error.
    """
    settings = Settings.build(
        role=role,
        wait=wait,
        on_timeout=on_timeout,
        lock=lock,
        name=name,
        lease=lease,
        poll=poll,
        connect_timeout=connect_timeout,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
    )
    target = dsn or runner.default_dsn() or dsn_from_env()
    if not target:
        raise ConfigurationError(
            "no database to migrate: pass dsn=, configure the runner's own URL, or set"
            " OUTLAST_DSN or DATABASE_URL"
        )
    outlast.parse_dsn(target)
    lock_target = lock_dsn or env_lock_dsn() or target
    coordinator = _Coordinator(runner, settings, target, lock_target, lease_table)
    started = time.monotonic()
    status = coordinator.run(deadline=started + settings.wait)
    if not status.ready:
        # on_timeout="unready": keep going in the background, no deadline.
        def follow(stop: threading.Event) -> SchemaStatus | None:
            again = _Coordinator(runner, settings, target, lock_target, lease_table, stop=stop)
            try:
                return again.run(deadline=None)
            except Exception:
                logger.exception("[MIGRATION] background run failed; the status stays unready")
                return None
            finally:
                _close_runner(runner)

        status._follow(follow)
    return status


def _close_runner(runner: Runner) -> None:
    try:
        runner.close()
    except Exception:  # pragma: no cover - closing is best effort
        logger.debug("closing the runner failed", exc_info=True)


class _Coordinator:
    """One process's loop (see the module docstring)."""

    def __init__(
        self,
        runner: Runner,
        settings: Settings,
        dsn: str,
        lock_dsn: str,
        lease_table: str,
        *,
        stop: threading.Event | None = None,
    ) -> None:
        self.runner = runner
        self.settings = settings
        self.dsn = dsn
        self.holder_id = holder_id(os.getpid())
        key_id = f"{advisory_key(settings.name)[1] & 0xFFFFFFFF:08x}"
        session: LockSession
        if settings.lock == "lease":
            session = LeaseLock(
                lock_dsn, settings, holder=self.holder_id, key_id=key_id, table=lease_table
            )
        else:
            session = AdvisoryLock(lock_dsn, settings, holder=self.holder_id, key_id=key_id)
        self.session = session
        self.stop = stop or threading.Event()
        self._started = time.monotonic()
        self._last_log: tuple[str, float] = ("", 0.0)
        self._backoff = settings.poll
        self._reason = "starting"
        self._holder: Holder | None = None
        self._state: SchemaState | None = None
        self._applied: list[str] = []
        self._applied_at: float | None = None
        self._leader = False
        self._conflicts = 0

    # ------------------------------------------------------------ the loop

    def run(self, *, deadline: float | None) -> SchemaStatus:
        s = self.settings
        logger.info(
            "[MIGRATION] start role=%s (%s) runner=%s lock=%s wait=%ss holder=%s",
            s.role,
            s.role_source,
            self.runner.describe(),
            s.lock,
            _s(s.wait) if deadline is not None else "inf",
            self.holder_id,
            extra={"outlast_event": "migration_start", "role": s.role, "lock": s.lock},
        )
        try:
            while True:
                if self.stop.is_set():
                    return self._status("pending", ready=False)
                done = self._step()
                if done is not None:
                    return done
                pause = self._pause()
                if deadline is not None and time.monotonic() + pause > deadline:
                    return self._timeout()
                self.stop.wait(pause)
        finally:
            self.session.close()

    def _pause(self) -> float:
        if self._reason in ("lock_held", "pending"):
            self._backoff = self.settings.poll
        base = self._backoff
        if self._reason not in ("lock_held", "pending"):
            self._backoff = min(_MAX_BACKOFF, self._backoff * 2)  # the database is in trouble
        # Jitter: twenty processes started together must not poll in lockstep.
        return base * random.uniform(0.5, 1.0)

    def _step(self) -> SchemaStatus | None:
        """One poll; a status when done, None to wait and poll again."""
        state = self._read_state()
        if state is None:
            return None
        if state.at_target:
            return self._reached(state, by_other=True)
        if self.settings.role == "wait":
            self._wait_log("pending")
            return None
        try:
            acquired = self.session.acquire()
        except (ConfigurationError, MigrationError):
            raise
        except Exception as exc:
            self._transient(exc, "acquire")
            return None
        if not acquired:
            self._holder = self._read_holder()
            self._wait_log("lock_held")
            return None
        return self._lead()

    def _read_state(self) -> SchemaState | None:
        try:
            state = self.runner.state(self.session)
        except (ConfigurationError, MigrationError):
            raise
        except Exception as exc:
            self._transient(exc, "check")
            return None
        self._state = state
        return state

    def _read_holder(self) -> Holder | None:
        try:
            return self.session.holder()
        except Exception:
            logger.debug("reading the lock's holder failed", exc_info=True)
            return self._holder

    def _transient(self, exc: BaseException, op: str) -> None:
        """A database fault while waiting: log the reason and wait; anything else raises."""
        fault = classify(exc)
        if fault is None:
            # Not the database: a broken migrations folder, a bug in env.py...
            raise MigrationFailed(
                f"cannot {op} the migration state: {type(exc).__name__}: {outlast.redact(exc)}",
                reason="error",
            ) from exc
        if fault.kind is FaultKind.PERMANENT:
            raise MigrationFailed(
                f"cannot {op} the migration state: {fault.reason}: {fault.message}",
                reason=fault.reason,
                sqlstate=fault.sqlstate,
            ) from exc
        self._wait_log(fault.reason)

    # ------------------------------------------------------------ leading

    def _lead(self) -> SchemaStatus | None:
        session = self.session
        s = self.settings
        acquired_at = time.monotonic()
        self._leader = True
        logger.info(
            "[MIGRATION] acquired lock=%s holder=%s waited=%ss",
            s.lock,
            self.holder_id,
            _s(acquired_at - self._started),
            extra={"outlast_event": "migration_acquired", "lock": s.lock},
        )
        result: SchemaStatus | None = None
        try:
            result = self._apply_under_lock()
        except MigrationFailed:
            raise
        except Exception as exc:
            if session.lost or isinstance(exc, MigrationLockLost):
                # The step in flight was rolled back (or never sent): whoever
                # takes the lock next, maybe this process, finishes the job.
                self._wait_log(f"lock_lost:{session.lost_reason or 'unknown'}")
                return None
            if isinstance(exc, ConfigurationError | MigrationError):
                raise
            fault = classify(exc)
            if fault is None:
                raise MigrationFailed(
                    f"a migration raised {type(exc).__name__}: {outlast.redact(exc)}",
                    reason="error",
                ) from exc
            if fault.kind is FaultKind.CONFLICT and self._conflicts < _MAX_CONFLICTS:
                self._conflicts += 1
                self._wait_log(fault.reason)
                return None
            if fault.kind in (FaultKind.UNAVAILABLE, FaultKind.READ_ONLY):
                self._wait_log(fault.reason)
                return None
            raise MigrationFailed(
                f"a migration failed: {fault.reason}: {fault.message}",
                reason=fault.reason,
                sqlstate=fault.sqlstate,
            ) from exc
        finally:
            self._release(acquired_at)
        return result

    def _apply_under_lock(self) -> SchemaStatus | None:
        session = self.session
        state = self.runner.state(session)  # again, now that nobody else can change it
        self._state = state
        if state.at_target:
            return self._reached(state, by_other=True)
        fenced = session.fence()
        if fenced:
            logger.warning(
                "[MIGRATION] fenced pids=%s (DDL sessions of an earlier leader whose lock is gone)",
                ",".join(map(str, fenced)),
                extra={"outlast_event": "migration_fenced", "pids": fenced},
            )
        watched: dict[int, int] = {}
        watch_lock = threading.Lock()

        def shut_down_watched() -> None:
            # The heartbeat lost the lock: a statement blocked on a frozen link
            # must fail now, not when TCP gives up.
            with watch_lock:
                for fileno in list(watched.values()):
                    socket_deadline.arm(fileno, 0.0)

        def watch(fileno: int) -> Callable[[], None]:
            with watch_lock:
                token = len(watched) + 1
                watched[token] = fileno
                if session.lost:
                    socket_deadline.arm(fileno, 0.0)

            def unwatch() -> None:
                with watch_lock:
                    watched.pop(token, None)

            return unwatch

        session.on_lost(shut_down_watched)
        s = self.settings
        server: dict[str, str] = {}
        if s.lock_timeout is not None:
            server["lock_timeout"] = str(round(s.lock_timeout * 1000))
        if s.statement_timeout is not None:
            server["statement_timeout"] = str(round(s.statement_timeout * 1000))
        ctx = ApplyContext(
            dsn=self.dsn,
            application_name=session.run_tag,
            server_settings=server,
            pooled=s.lock == "lease",
            check=session.check_held,
            progress=self._progress,
            keepalive_idle=max(1, round(s.lease / 4)),
            connect_timeout=s.connect_timeout,
            _watch=watch,
        )
        logger.info(
            "[MIGRATION] applying %s holder=%s",
            state.describe(),
            self.holder_id,
            extra={"outlast_event": "migration_applying", "pending": list(state.pending)},
        )
        started = time.monotonic()
        try:
            self.runner.apply(ctx)
        except BaseException:
            self._account(state)  # steps committed before the failure still count
            raise
        after = self.runner.state(session)
        applied = self._record(state, after)
        self._state = after
        if not after.at_target:
            raise MigrationFailed(
                f"the runner finished but {after.describe()}",
                reason="still_pending",
            )
        logger.info(
            "[MIGRATION] done applied=%d in %ss holder=%s",
            len(applied),
            _s(time.monotonic() - started),
            self.holder_id,
            extra={"outlast_event": "migration_done", "applied": applied},
        )
        return self._reached(after, by_other=False)

    def _account(self, before: SchemaState) -> None:
        """After a failed apply: record what was committed anyway (best effort)."""
        try:
            after = self.runner.state(self.session)
        except Exception:
            logger.debug("reading the state after a failed apply failed", exc_info=True)
            return
        self._state = after
        self._record(before, after)

    def _record(self, before: SchemaState, after: SchemaState) -> list[str]:
        applied = [p for p in before.pending if p not in after.pending]
        if applied:
            self._applied_at = time.time()
        for number, revision in enumerate(applied, 1):
            logger.info(
                "[MIGRATION] applied revision=%s (%d/%d) holder=%s",
                revision,
                number,
                len(before.pending),
                self.holder_id,
                extra={"outlast_event": "migration_applied", "revision": revision},
            )
        self._applied.extend(applied)
        return applied

    def _release(self, acquired_at: float) -> None:
        session = self.session
        if not session.held:
            return
        held = time.monotonic() - acquired_at
        if session.release():
            logger.info(
                "[MIGRATION] released lock=%s holder=%s held=%ss",
                self.settings.lock,
                self.holder_id,
                _s(held),
                extra={"outlast_event": "migration_released", "held": held},
            )
        else:
            logger.error(
                "[MIGRATION] release_failed lock=%s holder=%s reason=%s (the lock was no longer"
                " this session's; its session is closed)",
                self.settings.lock,
                self.holder_id,
                session.lost_reason or "not_held",
                extra={"outlast_event": "migration_release_failed"},
            )

    def _progress(self, message: str) -> None:
        logger.info(
            "[MIGRATION] %s",
            message,
            extra={"outlast_event": "migration_progress"},
        )

    # ------------------------------------------------------------ endings

    def _reached(self, state: SchemaState, *, by_other: bool) -> SchemaStatus:
        if self._applied:
            outcome = "applied"
        elif state.ahead:
            outcome = "ahead"
        else:
            outcome = "at_head"
        waited = time.monotonic() - self._started
        if by_other and not self._applied:
            reason = "ahead" if state.ahead else "at_head"
            logger.info(
                "[MIGRATION] skipped reason=%s %s holder=%s waited=%ss",
                reason,
                state.describe(),
                self.holder_id,
                _s(waited),
                extra={"outlast_event": "migration_skipped", "reason": reason},
            )
        return self._status(outcome, ready=True)

    def _status(self, outcome: str, *, ready: bool) -> SchemaStatus:
        status = SchemaStatus(
            role=self.settings.role,
            outcome=outcome,  # type: ignore[arg-type]
            state=self._state,
            applied=tuple(self._applied),
            leader=self._leader,
            waited=time.monotonic() - self._started,
            holder=self._holder,
            applied_at=self._applied_at,
        )
        if not ready:
            status.ready_at = None
        return status

    def _timeout(self) -> SchemaStatus:
        waited = time.monotonic() - self._started
        state = self._state
        what = state.describe() if state is not None else "the database never answered"
        holder = self._holder if self._reason == "lock_held" else None
        if self.settings.role == "wait":
            holder = self._read_holder_quietly()
        by = f"; lock held by {holder.describe()}" if holder is not None else ""
        message = (
            f"schema not at its target after {_s(waited)}s (role {self.settings.role},"
            f" last reason {self._reason}): {what}{by}"
        )
        logger.error(
            "[MIGRATION] timeout role=%s reason=%s %s%s",
            self.settings.role,
            self._reason,
            what,
            f" holder={holder.describe()}" if holder else "",
            extra={"outlast_event": "migration_timeout", "reason": self._reason},
        )
        if self.settings.on_timeout == "unready":
            return self._status("pending", ready=False)
        raise MigrationTimeout(message, holder=holder, state=state, reason=self._reason)

    def _read_holder_quietly(self) -> Holder | None:
        if not self.session.connected:
            return None
        return self._read_holder()

    def _wait_log(self, reason: str) -> None:
        self._reason = reason
        now = time.monotonic()
        holder = self._holder.describe() if self._holder and reason == "lock_held" else ""
        key = f"{reason}|{holder}"
        last_key, last_at = self._last_log
        if key == last_key and now - last_at < _LOG_EVERY:
            return
        self._last_log = (key, now)
        state = self._state.describe() if self._state is not None else "state unknown"
        extra: dict[str, Any] = {"outlast_event": "migration_waiting", "reason": reason}
        if self._holder is not None and reason == "lock_held":
            extra["holder"] = self._holder.as_dict()
        logger.info(
            "[MIGRATION] waiting role=%s reason=%s %s%s waited=%ss",
            self.settings.role,
            reason,
            state,
            f" holder={holder}" if holder else "",
            _s(now - self._started),
            extra=extra,
        )
