"""Connection hardening: presets, libpq parameters, session setup, restart faults.

A `Hardening` is an immutable value that says how a connection must behave when
the network or the server misbehaves. The driver integrations
(`outlast.sqlalchemy`, `outlast.psycopg`, `outlast.psycopg2`, `outlast.asyncpg`)
translate it into their own options; nothing here imports a driver.

Why each default (the README table repeats this):

- ``connect_timeout`` - libpq waits forever by default, per resolved address.
- ``keepalives_*`` / ``tcp_user_timeout`` - without them a request on a link
  that silently drops packets waits for kernel retransmission (15+ minutes).
- ``statement_timeout`` / ``idle_in_transaction_session_timeout`` - a runaway
  query or a forgotten transaction must not hold a connection (and its locks)
  for ever.
- ``ping_timeout`` - a check on checkout that cannot hang: SQLAlchemy's
  ``pool_pre_ping`` and psycopg_pool's ``check`` have no timeout of their own.
- ``max_lifetime`` (jittered) - connections are renewed now and then, but not
  all at the same moment in every process.
- ``pool_timeout`` - a request that cannot get a connection in a few seconds
  should get a 503, not wait 30 s.
- ``startup_options`` - where the server accepts them (a direct connection),
  the timeouts travel in the StartupMessage (``options=-c ...``): they hold from
  the first byte of the session, cost no round trip, and survive ``RESET ALL`` /
  ``DISCARD ALL``. Poolers (Neon ``-pooler`` hosts, PgBouncer) reject startup
  ``options``, so there the same settings are applied with ``SET`` right after
  connecting.
- ``prepared_statements`` - a transaction pooler runs each transaction on
  whichever server connection is free, where a statement prepared on another
  one does not exist ("prepared statement ... does not exist"). Pooler presets
  switch the drivers' server-side prepared statements off.
- ``connect_retries`` / ``connect_retry_budget`` - a compute that scaled to
  zero refuses the first logins while it wakes up (`_connect_retry`).

Client-side deadlines on sockets live in `socket_deadline` and `statements`.
"""

from __future__ import annotations

import math
import random
import re
import shlex
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from outlast._core.faults.fault import Fault

from outlast._core.faults.classify import classify
from outlast._core.faults.errors import ConfigurationError
from outlast._core.faults.fault import FOREIGN_REASONS, FaultKind
from outlast._core.timing.durations import seconds

from .dsn import parse_dsn

__all__ = [
    "PRESETS",
    "RESTART_SQLSTATES",
    "FaultReporter",
    "Hardening",
    "apply_socket_options",
    "asyncpg_connect_kwargs",
    "check_startup_options",
    "is_pooler_host",
    "is_restart_fault",
    "jittered_lifetime",
    "libpq_connect_kwargs",
    "libpq_params",
    "preset_for",
    "report_fault",
    "session_settings",
    "session_setup_sql",
    "startup_option_string",
    "without_settings",
]

_SECONDS_FIELDS = (
    "connect_timeout",
    "tcp_user_timeout",
    "statement_timeout",
    "idle_in_transaction_session_timeout",
    "ping_timeout",
    "max_lifetime",
    "pool_timeout",
    "deadline_grace",
    "connect_retry_budget",
)
_INT_FIELDS = ("keepalives_idle", "keepalives_interval", "keepalives_count")
# Server settings a preset manages; the client may set them itself in its own
# startup options, and then its value wins.
_SESSION_SETTINGS = ("statement_timeout", "idle_in_transaction_session_timeout")


@dataclass(frozen=True, slots=True)
class Hardening:
    """How connections behave when the network or the server misbehaves.

    Seconds may be given as ``float`` or ``timedelta``. ``None`` for a server
    timeout means "leave the server's setting alone"; ``0`` means "off".
    """

    name: str = "custom"
    connect_timeout: float = 3.0
    keepalives_idle: int = 10
    keepalives_interval: int = 3
    keepalives_count: int = 3
    tcp_user_timeout: float = 10.0
    statement_timeout: float | None = 30.0
    idle_in_transaction_session_timeout: float | None = 60.0
    application_name: str | None = "outlast"
    ping_timeout: float = 1.5
    max_lifetime: float = 1800.0
    max_lifetime_jitter: float = 0.1
    pool_timeout: float = 5.0
    startup_options: bool = True
    deadline_grace: float = 2.0
    prepared_statements: bool = True
    connect_retries: int = 0
    connect_retry_budget: float = 10.0

    def __post_init__(self) -> None:
        for name in _SECONDS_FIELDS:
            allow_none = name in _SESSION_SETTINGS
            value = seconds(getattr(self, name), name, allow_none=allow_none)
            object.__setattr__(self, name, value)
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a whole number >= 1, not {value!r}")
        jitter = self.max_lifetime_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ConfigurationError(f"max_lifetime_jitter must be in [0, 1), not {jitter!r}")
        if self.connect_timeout == 0:
            raise ConfigurationError("connect_timeout must be > 0 (0 means 'wait forever')")
        if self.ping_timeout == 0 or self.pool_timeout == 0:
            raise ConfigurationError("ping_timeout and pool_timeout must be > 0")
        if self.application_name is not None and not isinstance(self.application_name, str):
            raise ConfigurationError("application_name must be a string or None")
        for name in ("startup_options", "prepared_statements"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(f"{name} must be True or False")
        retries = self.connect_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError(
                f"connect_retries must be a whole number >= 0, not {retries!r}"
            )

    def replace(self, **changes: Any) -> Hardening:
        """A copy with some fields changed (validated like the original)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigurationError(f"unknown hardening option(s): {', '.join(unknown)}")
        return replace(self, **changes)

    @property
    def client_statement_timeout(self) -> float | None:
        """Client-side timeout of one statement: the server's timeout plus a grace period.

        The server normally cancels first (a clean 57014); the client-side
        socket deadline only fires when the server cannot answer at all.
        """
        if not self.statement_timeout:
            return None
        return self.statement_timeout + self.deadline_grace

    @property
    def statement_deadline(self) -> float | None:
        """Deprecated name of `client_statement_timeout` (it is a duration, not an instant)."""
        warnings.warn(
            "Hardening.statement_deadline is deprecated; use client_statement_timeout",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.client_statement_timeout

    @property
    def check_budget(self) -> float:
        """Worst case for getting a working connection on a dead link: ping + connect."""
        return self.ping_timeout + _libpq_connect_timeout(self.connect_timeout)


PRESETS: Mapping[str, Hardening] = {
    "default": Hardening(name="default"),
    # Neon computes that scaled to zero take a few seconds to wake up: the
    # connect timeout is longer and the logins refused meanwhile are retried;
    # idle connections die when the compute suspends, so they are renewed
    # more often.
    "neon": Hardening(name="neon", connect_timeout=10.0, max_lifetime=300.0, connect_retries=10),
    # PgBouncer (and any transaction pooler) rejects startup options and runs
    # each transaction on any server connection: no session state.
    "pgbouncer": Hardening(
        name="pgbouncer", connect_timeout=5.0, startup_options=False, prepared_statements=False
    ),
}


def is_pooler_host(host: str | None) -> bool:
    """True for hosts that name a connection pooler by themselves (Neon's ``-pooler``)."""
    if not host:
        return False
    return any("-pooler" in h.split(".", 1)[0].lower() for h in host.split(","))


def _looks_like_dsn(text: str) -> bool:
    return "://" in text or "=" in text


def preset_for(dsn_or_host: str | None = None, preset: str | Hardening = "default") -> Hardening:
    """The hardening for a DSN (or a bare host name) and a preset name or value.

    A host containing ``-pooler`` (Neon's pooler endpoints) switches startup
    options and server-side prepared statements off whatever the preset;
    PgBouncer's usual port 6432 does not, since a plain server may listen there
    too: pass ``preset="pgbouncer"``.
    """
    if isinstance(preset, Hardening):
        chosen = preset
    elif isinstance(preset, str) and preset in PRESETS:
        chosen = PRESETS[preset]
    else:
        raise ConfigurationError(
            f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))} "
            "or pass a Hardening value"
        )
    host = dsn_or_host
    if dsn_or_host and _looks_like_dsn(dsn_or_host):
        host = parse_dsn(dsn_or_host).get("host")
    if is_pooler_host(host) and (chosen.startup_options or chosen.prepared_statements):
        chosen = replace(chosen, startup_options=False, prepared_statements=False)
    return chosen


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _libpq_connect_timeout(seconds: float) -> int:
    # libpq takes whole seconds and treats anything below 2 as 2.
    return max(2, math.ceil(seconds))


def session_settings(preset: Hardening) -> dict[str, str]:
    """The server settings a preset manages, as ``name -> value`` (milliseconds)."""
    out: dict[str, str] = {}
    for name in _SESSION_SETTINGS:
        value: float | None = getattr(preset, name)
        if value is not None:
            out[name] = str(_ms(value))
    return out


def startup_option_string(settings: Mapping[str, str]) -> str:
    """``-c name=value`` pairs for libpq's ``options`` parameter."""
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def libpq_params(preset: Hardening) -> dict[str, str]:
    """libpq connection parameters (psycopg 3, psycopg2) for a preset.

    The server timeouts are included as ``options`` only when the preset allows
    startup options; otherwise run `session_setup_sql` after connecting.
    """
    params = {
        "connect_timeout": str(_libpq_connect_timeout(preset.connect_timeout)),
        "keepalives": "1",
        "keepalives_idle": str(preset.keepalives_idle),
        "keepalives_interval": str(preset.keepalives_interval),
        "keepalives_count": str(preset.keepalives_count),
        "tcp_user_timeout": str(_ms(preset.tcp_user_timeout)),
    }
    if preset.application_name:
        params["application_name"] = preset.application_name
    settings = session_settings(preset)
    if preset.startup_options and settings:
        params["options"] = startup_option_string(settings)
    return params


def session_setup_sql(preset: Hardening) -> list[str]:
    """Statements to run right after connecting (empty when startup options carry them)."""
    if preset.startup_options:
        return []
    return [f"SET {name} = {value}" for name, value in session_settings(preset).items()]


_OPTION_SETTING = re.compile(r"^(?:-c\s*|--)([A-Za-z_][A-Za-z0-9_.\-]*)=")


def _settings_in_options(options: str) -> set[str]:
    try:
        words = shlex.split(options)
    except ValueError:
        words = options.split()
    names: set[str] = set()
    pending = False
    for word in words:
        if pending:
            names.add(word.split("=", 1)[0].replace("-", "_").lower())
            pending = False
        elif word == "-c":
            pending = True
        else:
            match = _OPTION_SETTING.match(word)
            if match:
                names.add(match.group(1).replace("-", "_").lower())
    return names


def check_startup_options(options: str | None, preset: Hardening) -> set[str]:
    """Validate user-supplied startup ``options`` against a preset.

    Returns the setting names the user set there (their values win over the
    preset's). Raises `ConfigurationError` when the preset forbids startup
    options (a pooler) and the user passed some anyway: the pooler would reject
    every login.
    """
    if not options:
        return set()
    names = _settings_in_options(options)
    if not preset.startup_options:
        shown = ", ".join(sorted(names)) or "options"
        raise ConfigurationError(
            f"preset {preset.name!r} connects through a pooler that rejects startup "
            f"options ({shown}); drop 'options' and let outlast apply the settings "
            "with SET after connecting"
        )
    return names


def without_settings(preset: Hardening, names: set[str]) -> Hardening:
    """A preset that leaves the given server settings alone (the user set them)."""
    changes: dict[str, Any] = {name: None for name in _SESSION_SETTINGS if name in names}
    return replace(preset, **changes) if changes else preset


def libpq_connect_kwargs(
    preset: Hardening, given: Mapping[str, str], kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], Hardening]:
    """The caller's libpq keywords with the preset's merged in, and the effective preset.

    `given` holds the parameters already in the conninfo (or URL query): those
    and the keys in `kwargs` are the caller's and win. Startup ``options`` are
    concatenated (the caller's settings keep their values; the preset leaves
    them alone); a pooler preset rejects them with `ConfigurationError`.
    """
    out = dict(kwargs or {})
    user_options = out.get("options", given.get("options"))
    preset = without_settings(preset, check_startup_options(user_options, preset))
    for key, value in libpq_params(preset).items():
        if key == "options" and user_options:
            out["options"] = f"{user_options} {value}"
        elif key not in out and key not in given:
            out[key] = value
    return out, preset


def asyncpg_connect_kwargs(
    preset: Hardening, kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], Hardening]:
    """Keywords for ``asyncpg.connect`` (the caller's win) and the effective preset.

    ``timeout`` and ``command_timeout`` from the preset (and
    ``statement_cache_size=0`` when it forbids prepared statements); the server timeouts
    and ``application_name`` as ``server_settings`` (startup parameters) where
    the preset allows them. Server timeouts the caller put in
    ``server_settings`` keep their values, except with a pooler preset, which
    rejects them (`ConfigurationError`).
    """
    out = dict(kwargs or {})
    server = dict(out.get("server_settings") or {})
    managed = {name for name in _SESSION_SETTINGS if name in server}
    if managed and not preset.startup_options:
        raise ConfigurationError(
            f"preset {preset.name!r} connects through a pooler that rejects startup "
            f"parameters ({', '.join(sorted(managed))} in server_settings); drop them and "
            "let outlast apply the settings with SET after connecting"
        )
    preset = without_settings(preset, managed)
    out.setdefault("timeout", preset.connect_timeout)
    if not preset.prepared_statements:
        # 0 disables the cache: asyncpg then uses unnamed statements, which
        # live only as long as the exchange that created them.
        out.setdefault("statement_cache_size", 0)
    if preset.client_statement_timeout is not None:
        out.setdefault("command_timeout", preset.client_statement_timeout)
    if preset.application_name:
        server.setdefault("application_name", preset.application_name)
    if preset.startup_options:
        for name, value in session_settings(preset).items():
            server.setdefault(name, value)
    out["server_settings"] = server
    return out, preset


def jittered_lifetime(preset: Hardening, rng: random.Random | None = None) -> float:
    """``max_lifetime`` shortened by up to ``max_lifetime_jitter`` (never lengthened)."""
    r = (rng or random).random()
    return preset.max_lifetime * (1.0 - preset.max_lifetime_jitter * r)


# ----------------------------------------------------------- driver glue


class FaultReporter(Protocol):
    """What the connection hooks need from a `Guard`."""

    def classify(self, exc: BaseException, *, during_commit: bool = False) -> Fault | None: ...

    def record_failure(
        self, exc: BaseException, *, op: str | None = None, fault: Fault | None = None
    ) -> Fault | None: ...

    def record_success(self, *, op: str | None = None) -> None: ...

    def check(self) -> None: ...


RESTART_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006"})
"""SQLSTATEs after which every pooled connection to the server is suspect."""

_RESTART_REASONS = frozenset(
    {
        "connection_lost",
        "connection_refused",
        "connect_timeout",
        "admin_shutdown",
        "crash_shutdown",
        "shutting_down",
        "starting_up",
        "read_only_transaction",
        "server_unresponsive",
    }
)


def is_restart_fault(fault: Fault | None) -> bool:
    """True when a fault means the server restarted, failed over or the link died.

    After such a fault no pooled connection can be trusted: pools drop them
    all instead of letting each request discover a stale one.
    """
    if fault is None or fault.kind is FaultKind.PERMANENT or fault.reason in FOREIGN_REASONS:
        return False  # a bug, a refused login, a remote server's failure: this link is fine
    if fault.sqlstate is not None and (
        fault.sqlstate in RESTART_SQLSTATES or fault.sqlstate.startswith("08")
    ):
        return True
    return fault.reason in _RESTART_REASONS


def report_fault(
    guard: FaultReporter | None,
    exc: BaseException,
    op: str,
    *,
    unknown_is_restart: bool = False,
) -> bool:
    """Report `exc` to the Guard (if any); True when every pooled connection is suspect.

    That is a restart-class fault (`is_restart_fault`), or, with
    `unknown_is_restart`, an error nobody can classify (a failed ping is
    suspicious whatever it says).
    """
    fault = guard.record_failure(exc, op=op) if guard is not None else classify(exc)
    if fault is None:
        return unknown_is_restart
    return is_restart_fault(fault)


def apply_socket_options(sock: Any, preset: Hardening) -> None:
    """TCP keepalives and ``TCP_USER_TIMEOUT`` on a connected socket (Linux names).

    For drivers that do not expose libpq's parameters (asyncpg sets none).
    Options the platform lacks are skipped.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", preset.keepalives_idle),
        ("TCP_KEEPINTVL", preset.keepalives_interval),
        ("TCP_KEEPCNT", preset.keepalives_count),
        ("TCP_USER_TIMEOUT", _ms(preset.tcp_user_timeout)),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
