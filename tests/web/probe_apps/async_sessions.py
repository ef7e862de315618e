"""FastAPI, async endpoints, one ``AsyncSession`` per request (``outlast.starlette.session``).

The engine is a plain ``sqlalchemy.ext.asyncio.create_async_engine``: the
dependency hardens it with the app's Guard on first use. Writes are
``session.add`` and an ordinary ``await session.commit()``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import String, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import outlast
import outlast.starlette

DATABASE_URL = os.environ["DATABASE_URL"]
BUDGET = float(os.environ.get("OUTLAST_BUDGET", "5"))


class Base(DeclarativeBase):
    pass


class Lead(Base):
    __tablename__ = "lead_writes"

    row_id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[str] = mapped_column(String, index=True)
    name: Mapped[str]


class LeadIn(BaseModel):
    id: str
    name: str


engine = create_async_engine(DATABASE_URL)
get_session = outlast.starlette.session(async_sessionmaker(engine, expire_on_commit=False))
SessionDep = Annotated[AsyncSession, Depends(get_session)]

router = APIRouter(prefix="/api/leads")


@router.get("")
async def list_leads(session: SessionDep, ids: str | None = None) -> list[dict[str, Any]]:
    query = select(Lead).order_by(Lead.row_id.desc()).limit(50)
    if ids:
        query = select(Lead).where(Lead.lead_id.in_(ids.split(",")))
    return [{"id": r.lead_id, "row_id": r.row_id} for r in await session.scalars(query)]


@router.post("", status_code=201)
async def create_lead(lead: LeadIn, session: SessionDep) -> dict[str, Any]:
    row = Lead(lead_id=lead.id, name=lead.name)
    session.add(row)
    await session.commit()
    return {"id": lead.id, "row_id": row.row_id}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS lead_writes (row_id bigserial PRIMARY KEY,"
                " lead_id text NOT NULL, name text NOT NULL,"
                " created_at timestamptz NOT NULL DEFAULT now())"
            )
        )
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
outlast.starlette.install(app, guard=outlast.Guard.for_web("async"), budget=BUDGET)
app.include_router(router)


@app.get("/api/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}
