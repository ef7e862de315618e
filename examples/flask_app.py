"""A leads API written the way Flask apps are written, with outlast added in two lines.

Run it::

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
    OUTLAST_ENABLED=1 gunicorn -k gthread --threads 8 --chdir examples flask_app:app

What makes it an ordinary app: an app factory, Flask-SQLAlchemy models and its
``db.session``, the data routes in a blueprint under ``/api/leads`` behind a
Bearer token (a ``before_request`` hook of the blueprint; ``API_TOKEN``,
default ``demo-token``), a ping route and a container health route that never
touch the database. Writes are ``db.session.add(...)`` and an ordinary
``db.session.commit()``.

The outlast lines (marked ``# outlast``) change no view:

1. ``guard = outlast.Guard.for_web("main")`` -- one Guard for the database;
2. ``Outlast(app, guard=guard, budget=...)`` -- Flask-SQLAlchemy's engine is
   hardened with the Guard on the first request (``outlast.sqlalchemy.install``):
   a ``db.session.commit()`` whose reply is lost is resolved with
   ``pg_xact_status()`` (committed: 201; not applied: 503; unknown: 503
   ``OUTCOME_UNKNOWN``), statements are bounded by the request's budget, a
   dead connection is replaced and ``db.session.remove()`` after a dead link
   is quiet. Database faults become 503 with ``Retry-After``; a request is
   admitted by the breaker only when it reaches for the database (the ping,
   the health route, a 401 never get a 503 and never act as the probe); and
   ``/health/live``, ``/health/ready``, ``/health/db``.

Routes: ``GET /api/leads`` (the latest 50, or ``?ids=a,b``: one row per stored
write), ``GET /api/leads/<lead_id>``, ``POST /api/leads`` (``{"id":
"<client-chosen id>", "name": "..."}``), ``GET /api/ping``, ``GET /healthz``.
Writes go to ``lead_writes``, whose ``lead_id`` is not unique: a write applied
twice shows as two rows. ``OUTLAST_ENABLED=0`` runs the same code without the
outlast lines.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from _common import (
    API_TOKEN,
    BUDGET,
    CREATE_WRITES_INDEX,
    CREATE_WRITES_TABLE,
    DATABASE_URL,
    ENABLED,
)
from flask import Blueprint, Flask, abort, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger("example")


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Lead(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "lead_writes"

    row_id: Mapped[int] = mapped_column(primary_key=True)
    lead_id: Mapped[str] = mapped_column(String, index=True)  # not unique
    name: Mapped[str]


leads = Blueprint("leads", __name__, url_prefix="/api/leads")


@leads.before_request
def require_token() -> None:
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {API_TOKEN}".encode()):
        abort(401)


def _row(lead: Lead) -> dict[str, Any]:
    return {"id": lead.lead_id, "name": lead.name, "row_id": lead.row_id}


@leads.get("")
def list_leads() -> Any:
    query = select(Lead).order_by(Lead.row_id.desc()).limit(50)
    ids = request.args.get("ids")
    if ids:
        wanted = [i for i in ids.split(",") if i][:500]
        query = select(Lead).where(Lead.lead_id.in_(wanted)).order_by(Lead.row_id)
    return [_row(lead) for lead in db.session.scalars(query)]


@leads.get("/<lead_id>")
def get_lead(lead_id: str) -> Any:
    lead = db.session.scalars(select(Lead).where(Lead.lead_id == lead_id).limit(1)).first()
    if lead is None:
        abort(404)
    return _row(lead)


@leads.post("")
def create_lead() -> Any:
    body = request.get_json(force=True)
    row = Lead(lead_id=str(body["id"]), name=str(body["name"]))
    db.session.add(row)
    db.session.commit()
    return {"id": row.lead_id, "row_id": row.row_id}, 201


misc = Blueprint("misc", __name__)


@misc.get("/api/ping")
def ping() -> Any:
    return {"ok": True}


@misc.get("/healthz")
def healthz() -> Any:
    return {"status": "ok"}  # the container's health check: never the database


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = DATABASE_URL
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": not ENABLED}
    db.init_app(app)
    app.register_blueprint(leads)
    app.register_blueprint(misc)
    if ENABLED:
        import outlast
        from outlast.flask import Outlast

        guard = outlast.Guard.for_web("main")  # outlast
        Outlast(app, guard=guard, budget=BUDGET)  # outlast
        import outlast.prometheus

        outlast.prometheus.install(app)  # GET /metrics (optional: what a soak reads)
    with app.app_context():
        try:
            with db.engine.begin() as conn:
                conn.execute(text(CREATE_WRITES_TABLE))
                conn.execute(text(CREATE_WRITES_INDEX))
        except Exception as exc:  # the database may be late: serve anyway
            log.warning("could not create the leads table yet: %s", type(exc).__name__)
    return app


app = create_app()
