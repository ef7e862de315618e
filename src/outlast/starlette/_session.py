"""`session`: a FastAPI dependency that gives each request its own SQLAlchemy session.

::

    SessionLocal = sessionmaker(engine)            # or async_sessionmaker(async_engine)
    get_session = outlast.starlette.session(SessionLocal)

    @router.post("/leads", status_code=201)
    def add(lead: LeadIn, db: Session = Depends(get_session)):
        db.add(Lead(**lead.model_dump()))
        db.commit()                                # a lost reply is resolved, not guessed

What it adds to the usual ``with SessionLocal() as s: yield s``:

- the engine behind the factory is hardened with the app's Guard the first
  time (unless it already is: `outlast.sqlalchemy.create_engine` /
  `install`), so ``commit()`` resolves a lost COMMIT with
  ``pg_xact_status()`` -- committed: it returns; aborted: a 503 that says
  "not applied"; unknown: a 503 ``OUTCOME_UNKNOWN`` -- and every statement
  is bounded by the request's budget;
- the session is rolled back when the request failed and closed without
  ever raising: after a dead link neither a traceback in the server log nor a
  reset connection for the client.

It does not commit for you: the endpoint calls ``commit()`` as it would
without outlast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from starlette.requests import Request

__all__ = ["session"]


def session(factory: Callable[[], Any]) -> Callable[..., Any]:
    """A FastAPI dependency yielding ``factory()`` for one request (sync or async sessions)."""
    from outlast.sqlalchemy._sessions import aend, end, harden, is_async_factory

    def _harden(request: Request) -> None:
        ol = getattr(request.app.state, "outlast", None)
        if ol is not None:
            harden(factory, ol.guard)

    if is_async_factory(factory):

        async def async_session(request: Request) -> AsyncIterator[Any]:
            _harden(request)
            current = factory()
            error: BaseException | None = None
            try:
                yield current
            except BaseException as exc:
                error = exc
                raise
            finally:
                await aend(current, error)

        return async_session

    def sync_session(request: Request) -> Iterator[Any]:
        _harden(request)
        current = factory()
        error: BaseException | None = None
        try:
            yield current
        except BaseException as exc:
            error = exc
            raise
        finally:
            end(current, error)

    return sync_session
