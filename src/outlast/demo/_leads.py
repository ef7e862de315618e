"""What the reference service's three builds share: the table's SQL, the request
body, reading and listing writes (no outlast here: the plain and hand-fixed
builds use it as they are)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outlast.demo._settings import CREATE_WRITES_INDEX, CREATE_WRITES_TABLE

__all__ = [
    "BY_IDS",
    "COUNT",
    "INSERT",
    "LATEST",
    "LeadIn",
    "add_hand_written_routes",
    "create_table",
    "parse_ids",
    "select",
]

log = logging.getLogger("outlast.demo")

_COLUMNS = "lead_id AS id, name, row_id"
LATEST = text(f"SELECT {_COLUMNS} FROM lead_writes ORDER BY row_id DESC LIMIT 50")
BY_IDS = text(f"SELECT {_COLUMNS} FROM lead_writes WHERE lead_id = ANY(:ids) ORDER BY row_id")
# A bare INSERT: nothing would absorb a second copy of the same write.
INSERT = text("INSERT INTO lead_writes (lead_id, name) VALUES (:id, :name) RETURNING row_id")
COUNT = text("SELECT count(*) FROM lead_writes")


class LeadIn(BaseModel):
    id: str
    name: str


async def select(conn: AsyncConnection, ids: list[str] | None) -> list[dict[str, Any]]:
    rows = await conn.execute(BY_IDS, {"ids": ids}) if ids else await conn.execute(LATEST)
    return [dict(r._mapping) for r in rows]


def parse_ids(raw: str | None) -> list[str] | None:
    return [i for i in raw.split(",") if i][:500] if raw else None


async def create_table(engine: AsyncEngine) -> None:
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(CREATE_WRITES_TABLE)
            await conn.exec_driver_sql(CREATE_WRITES_INDEX)
    except Exception as exc:  # the database may be late: serve anyway
        log.warning("could not create the leads table yet: %s", type(exc).__name__)


def add_hand_written_routes(app: FastAPI, state: dict[str, Any]) -> None:
    """``/api/ping`` and hand-written ``/health/live`` and ``/health/ready``.

    The two services without outlast (plain and fixed by hand) share them:
    readiness is whether their background loop's task is still running.
    """
    from fastapi.responses import JSONResponse

    @app.get("/api/ping")
    async def ping() -> dict[str, Any]:
        return {"ok": True, "leads_seen_by_loop": state["leads"]}

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "pass"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        task = state["task"]
        alive = task is not None and not task.done()
        status = "pass" if alive else "fail"
        return JSONResponse(
            {
                "status": status,
                "checks": {"loop:count_leads": [{"componentType": "loop", "status": status}]},
            },
            status_code=200 if alive else 503,
        )
