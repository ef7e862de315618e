"""A Flask service with outlast, its health endpoints and /metrics."""

from __future__ import annotations

import flask
from metrics_common import count, engine, guard, start_background, supervisor

import outlast.prometheus
from outlast.flask import Outlast, no_db

app = flask.Flask(__name__)
Outlast(app, guard=guard, engine=engine, supervisor=supervisor, budget=2.0)
outlast.prometheus.install(app)
start_background()


@app.get("/api/count")
def api_count() -> dict[str, int]:
    return {"n": count()}


@app.get("/api/ping")
@no_db
def ping() -> dict[str, bool]:
    return {"ok": True}
