"""Options of a migration run, validated once, and the environment read in one place.

Environment variables (only here):

- ``OUTLAST_MIGRATE`` — ``1`` (this process may migrate) or ``0`` (it only
  waits for the schema); also ``migrate`` / ``wait``, ``true`` / ``false``.
- ``RUN_MIGRATIONS`` — the same, under the name many deployments already use;
  ``OUTLAST_MIGRATE`` wins when both are set.
- ``OUTLAST_MIGRATE_WAIT`` — seconds to wait for the lock or the schema.
- ``OUTLAST_MIGRATE_LOCK`` — ``advisory`` or ``lease``.
- ``OUTLAST_MIGRATE_LOCK_DSN`` — a direct DSN for the lock session.
- ``OUTLAST_DSN``, then ``DATABASE_URL`` — the database, when none is given.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, cast

from outlast import ConfigurationError

__all__ = [
    "LockMode",
    "OnTimeout",
    "Role",
    "Settings",
    "dsn_from_env",
    "env_lock",
    "env_lock_dsn",
    "env_wait",
    "role_from_env",
    "seconds",
]

Role = Literal["migrate", "wait"]
LockMode = Literal["advisory", "lease"]
OnTimeout = Literal["fail", "unready"]

ROLE_VARIABLES = ("OUTLAST_MIGRATE", "RUN_MIGRATIONS")
_MIGRATE_WORDS = frozenset({"1", "true", "yes", "on", "migrate"})
_WAIT_WORDS = frozenset({"0", "false", "no", "off", "wait"})


def seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """`value` (seconds as a number, or a `timedelta`) as a float; ConfigurationError if bad."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        limit = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a finite number of seconds {limit}, not {value!r}"
        )
    return float(value)


def _role_word(variable: str, raw: str) -> Role:
    word = raw.strip().lower()
    if word in _MIGRATE_WORDS:
        return "migrate"
    if word in _WAIT_WORDS:
        return "wait"
    raise ConfigurationError(
        f"{variable} must be 1 (migrate) or 0 (wait for the schema), not {raw.strip()[:20]!r}"
    )


def role_from_env(environ: Mapping[str, str] | None = None) -> tuple[Role, str] | None:
    """The role the environment asks for and the variable that said so, or None."""
    env = os.environ if environ is None else environ
    for variable in ROLE_VARIABLES:
        raw = env.get(variable)
        if raw is not None and raw.strip():
            return _role_word(variable, raw), variable
    return None


def resolve_role(role: str | None, environ: Mapping[str, str] | None = None) -> tuple[Role, str]:
    """An explicit role wins; else the environment; else ``migrate`` (the lock keeps it safe)."""
    if role is not None:
        if role not in ("migrate", "wait"):
            raise ConfigurationError(f"role must be 'migrate' or 'wait', not {role!r}")
        return cast(Role, role), "argument"
    found = role_from_env(environ)
    if found is not None:
        return found
    return "migrate", "default"


def env_wait(environ: Mapping[str, str] | None = None) -> float | None:
    """``OUTLAST_MIGRATE_WAIT`` in seconds, or None when unset."""
    env = os.environ if environ is None else environ
    raw = env.get("OUTLAST_MIGRATE_WAIT", "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"OUTLAST_MIGRATE_WAIT must be a number of seconds, not {raw[:20]!r}"
        ) from None
    return seconds("OUTLAST_MIGRATE_WAIT", value)


def env_lock(environ: Mapping[str, str] | None = None) -> LockMode | None:
    """``OUTLAST_MIGRATE_LOCK`` (``advisory`` / ``lease``), or None when unset."""
    env = os.environ if environ is None else environ
    raw = env.get("OUTLAST_MIGRATE_LOCK", "").strip().lower()
    if not raw:
        return None
    if raw not in ("advisory", "lease"):
        raise ConfigurationError(
            f"OUTLAST_MIGRATE_LOCK must be advisory or lease, not {raw[:20]!r}"
        )
    return cast(LockMode, raw)


def env_lock_dsn(environ: Mapping[str, str] | None = None) -> str | None:
    """``OUTLAST_MIGRATE_LOCK_DSN``, or None."""
    env = os.environ if environ is None else environ
    return env.get("OUTLAST_MIGRATE_LOCK_DSN", "").strip() or None


def dsn_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """``OUTLAST_DSN``, then ``DATABASE_URL``, or None."""
    env = os.environ if environ is None else environ
    for variable in ("OUTLAST_DSN", "DATABASE_URL"):
        value = env.get(variable, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated knobs of one run (see `outlast.migrate.run` for each)."""

    role: Role
    role_source: str
    wait: float
    on_timeout: OnTimeout
    lock: LockMode
    name: str
    lease: float
    poll: float
    connect_timeout: float
    lock_timeout: float | None
    statement_timeout: float | None

    @classmethod
    def build(
        cls,
        *,
        role: str | None,
        wait: float | timedelta | None,
        on_timeout: str,
        lock: str | None,
        name: str,
        lease: float | timedelta,
        poll: float | timedelta,
        connect_timeout: float | timedelta,
        lock_timeout: float | timedelta | None,
        statement_timeout: float | timedelta | None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Validate every option (arguments first, then the environment)."""
        chosen_role, source = resolve_role(role, environ)
        if wait is None:
            wait = env_wait(environ)
        wait_s = 120.0 if wait is None else seconds("wait", wait)
        if on_timeout not in ("fail", "unready"):
            raise ConfigurationError(f"on_timeout must be 'fail' or 'unready', not {on_timeout!r}")
        mode = lock if lock is not None else env_lock(environ) or "advisory"
        if mode not in ("advisory", "lease"):
            raise ConfigurationError(f"lock must be 'advisory' or 'lease', not {mode!r}")
        if not isinstance(name, str) or not name or len(name) > 63:
            raise ConfigurationError("name must be a non-empty string of at most 63 characters")
        lease_s = seconds("lease", lease, allow_zero=False)
        if lease_s < 2:
            raise ConfigurationError(f"lease must be at least 2 seconds, not {lease_s!r}")
        poll_s = seconds("poll", poll, allow_zero=False)
        if poll_s > lease_s / 2:
            raise ConfigurationError("poll must be at most half the lease")
        return cls(
            role=chosen_role,
            role_source=source,
            wait=wait_s,
            on_timeout=cast(OnTimeout, on_timeout),
            lock=cast(LockMode, mode),
            name=name,
            lease=lease_s,
            poll=poll_s,
            connect_timeout=seconds("connect_timeout", connect_timeout, allow_zero=False),
            lock_timeout=None if lock_timeout is None else seconds("lock_timeout", lock_timeout),
            statement_timeout=(
                None
                if statement_timeout is None
                else seconds("statement_timeout", statement_timeout)
            ),
        )

    @property
    def heartbeat(self) -> float:
        """How often a leader proves it is alive: four beats per lease."""
        return self.lease / 4
