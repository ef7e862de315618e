"""`harden_database`: outlast's connection settings merged into a ``DATABASES`` entry.

::

    import dj_database_url
    from outlast.django import harden_database

    DATABASES = {"default": harden_database(dj_database_url.config(conn_max_age=60))}

Replacing ``OPTIONS`` wholesale (``DATABASES["default"]["OPTIONS"] = {...}``)
drops what was already there -- ``sslmode`` from ``dj-database-url``, a
``service`` or a ``search_path``. This merges instead: every option already in
the entry wins, startup ``options`` are concatenated (a ``-c`` setting you
gave keeps its value), and outlast adds the rest of the preset: a connect
timeout, TCP keepalives, ``tcp_user_timeout``, ``statement_timeout`` and
``idle_in_transaction_session_timeout``, an ``application_name``. For a
pooler (``preset="pgbouncer"`` or a Neon ``-pooler`` host) the two server
timeouts are set with ``SET`` after each connect, since poolers reject startup
options. The preset's connect retries and pool settings do not apply:
Django opens its own connections.
"""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from typing import Any

from outlast._core.connections.hardening import (
    Hardening,
    libpq_connect_kwargs,
    preset_for,
    session_setup_sql,
)
from outlast._core.faults.errors import ConfigurationError

__all__ = ["harden_database"]

# (host, port, name, user) -> SET statements to run after connecting (poolers).
_SETUP: dict[tuple[str, str, str, str], list[str]] = {}
_lock = threading.Lock()
_connected = False


def _key(settings: MutableMapping[str, Any]) -> tuple[str, str, str, str]:
    return tuple(str(settings.get(k) or "") for k in ("HOST", "PORT", "NAME", "USER"))  # type: ignore[return-value]


def _on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
    statements = _SETUP.get(_key(connection.settings_dict))
    if statements and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for sql in statements:
                cursor.execute(sql)


def _run_setup_after_connect(settings: MutableMapping[str, Any], statements: list[str]) -> None:
    global _connected
    from django.db.backends.signals import connection_created

    with _lock:
        _SETUP[_key(settings)] = statements
        if not _connected:
            connection_created.connect(_on_connect, weak=False, dispatch_uid="outlast-pooler-set")
            _connected = True


def harden_database(
    database: MutableMapping[str, Any], *, preset: str | Hardening = "default"
) -> MutableMapping[str, Any]:
    """Merge outlast's hardening into one ``DATABASES`` entry; returns the same entry.

    `preset` is a preset name (``"default"``, ``"neon"``, ``"pgbouncer"``) or an
    ``outlast.Hardening``. Options already in ``OPTIONS`` win. Raises
    `ConfigurationError` for an engine that is not PostgreSQL, and for startup
    ``options`` given with a pooler preset (the pooler would refuse every login).
    """
    engine = str(database.get("ENGINE", ""))
    if "postg" not in engine:  # django.db.backends.postgresql, PostGIS, and their subclasses
        raise ConfigurationError(
            f"harden_database() is for PostgreSQL databases, not ENGINE={engine!r}"
        )
    options = dict(database.get("OPTIONS") or {})
    host = database.get("HOST") or None
    chosen = preset_for(str(host) if host else None, preset)
    merged, effective = libpq_connect_kwargs(chosen, {}, options)
    database["OPTIONS"] = merged
    statements = session_setup_sql(effective)
    if statements:
        _run_setup_after_connect(database, statements)
    return database
