"""Per-request sessions for the web integrations: hardened binds, quiet ends.

What a FastAPI dependency (`outlast.starlette.session`) and the Flask
extension (Flask-SQLAlchemy's ``db.session``, a ``scoped_session``) need from
SQLAlchemy:

- `harden`: make sure the engine behind a session factory is hardened
  (`outlast.sqlalchemy.install` with the web Guard, once), since the
  lost-COMMIT resolution of an ordinary ``session.commit()`` and the quiet
  ROLLBACK live in the engine's hooks;
- `end` / `aend`: roll back what a failed request left open and close the
  session without ever raising: after the link died a ROLLBACK can only
  fail, and an error raised while a response is being sent ends up as a
  traceback in the server log and a reset connection for the client.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from outlast._core.connections.hardening import FaultReporter

from ._engine import hardening_of, install

__all__ = ["aend", "binds_of", "end", "harden", "is_async_factory"]

logger = logging.getLogger("outlast")
_lock = threading.Lock()


def is_async_factory(factory: Any) -> bool:
    """True for an ``async_sessionmaker`` (or anything that makes `AsyncSession`\\s)."""
    if isinstance(factory, async_sessionmaker):
        return True
    return isinstance(getattr(factory, "class_", None), type) and issubclass(
        factory.class_, AsyncSession
    )


def binds_of(source: Any) -> list[Engine]:
    """The sync engines behind a session factory, a session, a scoped session or an engine."""
    if isinstance(source, AsyncEngine):
        return [source.sync_engine]
    if isinstance(source, Engine):
        return [source]
    if isinstance(source, scoped_session):
        return binds_of(source.session_factory)
    if isinstance(source, sessionmaker | async_sessionmaker):
        kw = source.kw
        found = [kw.get("bind"), *(kw.get("binds") or {}).values()]
        return [e for b in found if b is not None for e in binds_of(b)]
    if isinstance(source, Session | AsyncSession):
        sync = source.sync_session if isinstance(source, AsyncSession) else source
        found = [sync.bind, *sync._Session__binds.values()]  # type: ignore[attr-defined]
        return [e for b in found if b is not None for e in binds_of(b)]
    return []


def harden(source: Any, guard: FaultReporter) -> None:
    """Install outlast's hooks on every engine behind `source` that has none yet."""
    for engine in binds_of(source):
        if hardening_of(engine) is not None:
            continue
        with _lock:
            if hardening_of(engine) is None:
                install(engine, guard)
                logger.info(
                    "[ENGINE_HARDENED] engine=%s (lost COMMITs resolved, bounded statements)",
                    engine.url.render_as_string(hide_password=True),
                )


def end(session: Any, error: BaseException | None = None) -> None:
    """Roll back (after `error`) and close a session; never raises."""
    try:
        if error is not None:
            session.rollback()
        session.close()
    except Exception as exc:
        logger.debug("[SESSION_END] %s while closing a session", type(exc).__name__)
        try:
            session.invalidate()
        except Exception:
            pass


async def aend(session: Any, error: BaseException | None = None) -> None:
    """The asyncio twin of `end`."""
    try:
        if error is not None:
            await session.rollback()
        await session.close()
    except Exception as exc:
        logger.debug("[SESSION_END] %s while closing a session", type(exc).__name__)
        try:
            await session.invalidate()
        except Exception:
            pass
