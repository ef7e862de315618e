"""A leads API on Flask + SQLAlchemy (scoped_session), with or without outlast.

Run it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 gunicorn -k gthread --threads 8 --chdir examples flask_app:app

Same routes as the FastAPI example. Reads go through ``web.call`` (the Guard,
within the request budget); the write is one ``web.transaction`` (a lost COMMIT
is resolved, never replayed). The lead's id is the table's key, so a client
that sends the same lead twice stores it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from _common import BUDGET, CREATE_TABLE, DATABASE_URL, ENABLED
from flask import Flask, request
from sqlalchemy import Connection, text
from sqlalchemy.orm import scoped_session, sessionmaker

log = logging.getLogger("example")

if ENABLED:
    from _common import attempt_reserve, web_guard, web_hardening

    import outlast.sqlalchemy
    from outlast.flask import Outlast, no_db

    guard = web_guard()
    hardening = web_hardening()
    # guard=: the pool reports faults to the Guard the web layer uses and does
    # not ping a dead server while the breaker is open.
    engine = outlast.sqlalchemy.create_engine(DATABASE_URL, guard=guard, preset=hardening)
else:
    from sqlalchemy import create_engine

    engine = create_engine(DATABASE_URL, pool_pre_ping=True)

    def no_db(view: Any) -> Any:
        return view


Session = scoped_session(sessionmaker(bind=engine))
app = Flask(__name__)
web = (
    Outlast(
        app,
        guard=guard,
        budget=BUDGET,
        session=Session,
        engine=engine,
        attempt_reserve=attempt_reserve(hardening, BUDGET),
    )
    if ENABLED
    else None
)

try:
    with engine.begin() as conn:
        conn.exec_driver_sql(CREATE_TABLE)
except Exception as exc:  # the database may be late: serve anyway
    log.warning("could not create the leads table yet: %s", type(exc).__name__)


@app.teardown_appcontext
def remove_session(exc: BaseException | None) -> None:
    Session.remove()


def run(fn: Callable[[], Any], *, idempotent: bool) -> Any:
    """Through the Guard (retries, breaker, budget) with outlast; directly without."""
    if web is None:
        return fn()
    return web.call(fn, idempotent=idempotent)


@app.get("/api/leads")
def list_leads() -> Any:
    def fetch() -> list[dict[str, Any]]:
        try:
            rows = Session.execute(
                text("SELECT id, name FROM leads ORDER BY created_at DESC, id LIMIT 50")
            )
            return [dict(r._mapping) for r in rows]
        except Exception:
            Session.rollback()  # a retry needs a clean session
            raise

    return run(fetch, idempotent=True)


INSERT = text("INSERT INTO leads (id, name) VALUES (:id, :name) ON CONFLICT (id) DO NOTHING")


def insert(conn: Connection, lead_id: str, name: str) -> None:
    conn.execute(INSERT, {"id": lead_id, "name": name})


@app.post("/api/leads")
def create_lead() -> Any:
    body = request.get_json(force=True)
    lead_id, name = str(body["id"]), str(body["name"])
    if web is None:
        with engine.begin() as conn:  # a lost COMMIT reply is a 500, applied or not
            insert(conn, lead_id, name)
    else:
        # One transaction within the rest of the request budget: re-run whole
        # if a fault strikes before COMMIT; a lost COMMIT is resolved with
        # pg_xact_status(), never sent again (unresolved: 503 OUTCOME_UNKNOWN).
        web.transaction(engine, insert, lead_id, name)
    return {"id": lead_id}, 201


@app.get("/api/ping")
@no_db
def ping() -> Any:
    return {"ok": True}
