"""A FastAPI service with outlast, its health endpoints and /metrics."""

from __future__ import annotations

from fastapi import FastAPI
from metrics_common import count, engine, guard, start_background, supervisor

import outlast.prometheus
from outlast.starlette import install, no_db

app = FastAPI()
install(app, guard=guard, engine=engine, supervisor=supervisor, budget=2.0)
outlast.prometheus.install(app)
start_background()


@app.get("/api/count")
def api_count() -> dict[str, int]:
    return {"n": count()}


@app.get("/api/ping")
@no_db
def ping() -> dict[str, bool]:
    return {"ok": True}
