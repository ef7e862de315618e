"""A leads API written the way FastAPI apps are written, with outlast added in three lines.

Run it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 uvicorn fastapi_app:app --app-dir examples

What makes it an ordinary app: SQLAlchemy ORM models, a ``sessionmaker`` and
a ``get_session`` dependency injected with ``Depends`` (the FastAPI tutorial's
pattern), routes in ``APIRouter``\\s under an ``/api`` prefix, every data route
behind a Bearer token (``API_TOKEN``, default ``demo-token``),
``CORSMiddleware`` added before outlast (where the FastAPI docs put it), a
static mount, and a health route for the container that never touches the
database. Writes are ``session.add(...)`` and an ordinary ``session.commit()``.

The outlast lines (marked ``# outlast``) change no endpoint:

1. ``guard = outlast.Guard.for_web("main")`` -- one Guard for the database,
   with a breaker tuned for web services;
2. ``engine = outlast.sqlalchemy.create_engine(DATABASE_URL, guard=guard)``
   instead of ``sqlalchemy.create_engine`` -- every ``session.commit()`` whose
   reply is lost is resolved with ``pg_xact_status()`` (committed: the 201
   goes out; not applied: 503; unknown: 503 ``OUTCOME_UNKNOWN``), every
   statement is bounded by the request's budget, a dead connection is never
   handed out and closing a session after a dead link is quiet;
3. ``outlast.starlette.install(app, guard=guard, engine=engine)`` -- 503 with
   ``Retry-After`` for database faults (CORS headers included), a request
   admitted by the breaker only when it reaches for the database (``/api/ping``,
   ``/healthz``, the static files and a 401 never get a 503 and never act as the
   half-open probe), ``/health/live``, ``/health/ready`` and ``/health/db``.

Routes: ``GET /api/leads`` (the latest 50, or ``?ids=a,b``: one row per stored
write), ``GET /api/leads/{lead_id}``, ``POST /api/leads`` (``{"id":
"<client-chosen id>", "name": "..."}``), ``GET /api/ping``, ``GET /healthz``,
``/static/hello.txt``. Writes go to ``lead_writes``, whose ``lead_id`` is not
unique: a write applied twice shows as two rows. ``OUTLAST_ENABLED=0`` runs
the same code without the outlast lines.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from _common import (
    API_TOKEN,
    BUDGET,
    CREATE_WRITES_INDEX,
    CREATE_WRITES_TABLE,
    DATABASE_URL,
    ENABLED,
)
from fastapi import APIRouter, Depends, FastAPI, HTTPException, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger("example")

if ENABLED:
    import outlast
    import outlast.sqlalchemy
    import outlast.starlette

    guard = outlast.Guard.for_web("main")  # outlast
    engine = outlast.sqlalchemy.create_engine(DATABASE_URL, guard=guard)  # outlast
else:
    from sqlalchemy import create_engine

    engine = create_engine(DATABASE_URL, pool_pre_ping=True)


class Base(DeclarativeBase):
    pass


class Lead(Base):
    __tablename__ = "lead_writes"

    row_id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[str] = mapped_column(String, index=True)  # not unique
    name: Mapped[str]


class LeadIn(BaseModel):
    id: str
    name: str


SessionLocal = sessionmaker(engine, autoflush=False)


def get_session() -> Iterator[Session]:
    with SessionLocal() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
bearer = HTTPBearer(auto_error=False)


def require_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if credentials is None or credentials.credentials != API_TOKEN:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid token", {"WWW-Authenticate": "Bearer"}
        )


def _row(lead: Lead) -> dict[str, Any]:
    return {"id": lead.lead_id, "name": lead.name, "row_id": lead.row_id}


leads = APIRouter(prefix="/leads", tags=["leads"], dependencies=[Depends(require_token)])


@leads.get("")
def list_leads(session: SessionDep, ids: str | None = None) -> list[dict[str, Any]]:
    query = select(Lead).order_by(Lead.row_id.desc()).limit(50)
    if ids:
        wanted = [i for i in ids.split(",") if i][:500]
        query = select(Lead).where(Lead.lead_id.in_(wanted)).order_by(Lead.row_id)
    return [_row(lead) for lead in session.scalars(query)]


@leads.get("/{lead_id}")
def get_lead(lead_id: str, session: SessionDep) -> dict[str, Any]:
    lead = session.scalars(select(Lead).where(Lead.lead_id == lead_id).limit(1)).first()
    if lead is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such lead")
    return _row(lead)


@leads.post("", status_code=status.HTTP_201_CREATED)
def create_lead(lead: LeadIn, session: SessionDep) -> dict[str, Any]:
    row = Lead(lead_id=lead.id, name=lead.name)
    session.add(row)
    session.commit()
    session.refresh(row)  # as the FastAPI tutorial does: a read after the commit
    return {"id": lead.id, "row_id": row.row_id}


api = APIRouter(prefix="/api")
api.include_router(leads)


@api.get("/ping")
def ping() -> dict[str, bool]:
    return {"ok": True}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    try:
        with engine.begin() as conn:
            conn.execute(text(CREATE_WRITES_TABLE))
            conn.execute(text(CREATE_WRITES_INDEX))
    except Exception as exc:  # the database may be late: serve anyway
        log.warning("could not create the leads table yet: %s", type(exc).__name__)
    yield
    engine.dispose()


app = FastAPI(title="leads", lifespan=lifespan)
app.add_middleware(
    CORSMiddleware,
    allow_origins=["https://app.example.com"],
    allow_methods=["*"],
    allow_headers=["*"],
    expose_headers=["Retry-After"],
)
if ENABLED:
    outlast.starlette.install(app, guard=guard, engine=engine, budget=BUDGET)  # outlast
    import outlast.prometheus

    outlast.prometheus.install(app)  # GET /metrics (optional: what `outlast drill --soak` reads)
app.include_router(api)
app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}  # the container's health check: never the database
