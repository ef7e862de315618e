"""Slot health in a web service: ``ready=monitor.ready`` and a health document route.

`SlotMonitor.ready` plugs into the web integrations' ``ready=`` (here Flask's
``/health/ready``); `SlotMonitor.health` is an ``application/health+json``
document for a route of its own. Neither runs a query: both read the last
report, so a health request answers at once even when the database does not.
"""

from __future__ import annotations

import json

import psycopg
from flask import Flask, Response
from repl_kit import sql

from outlast.flask import Outlast
from outlast.replication import SlotMonitor, Verdict


def test_ready_and_health_follow_the_slot_without_querying(repl_db) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    opened = []

    def connect():
        opened.append(1)
        return psycopg.connect(repl_db.dsn(), autocommit=True)

    monitor = SlotMonitor(connect, slots=["cdc"])
    app = Flask("cdc-worker")
    Outlast(app, ready=monitor.ready)

    @app.get("/health/replication")
    def replication() -> Response:
        status, doc = monitor.health()
        return Response(json.dumps(doc), status=status, content_type="application/health+json")

    client = app.test_client()
    try:
        assert client.get("/health/ready").status_code == 503  # no slot report yet
        assert client.get("/health/replication").json["status"] == "warn"
        monitor.check()
        assert client.get("/health/ready").status_code == 200
        answer = client.get("/health/replication")
        assert answer.status_code == 200 and answer.content_type == "application/health+json"
        (entry,) = answer.json["checks"]["replication:slots"]
        assert entry["componentId"] == "cdc" and entry["status"] == "pass"

        sql(repl_db.dsn(), "SELECT pg_drop_replication_slot('cdc')")
        assert monitor.check()["cdc"].verdict is Verdict.LOST
        connections = len(opened)
        for _ in range(5):
            assert client.get("/health/ready").status_code == 503
            answer = client.get("/health/replication")
            assert answer.status_code == 503 and answer.json["status"] == "fail"
        assert len(opened) == connections  # health never connects
        assert client.get("/health/live").status_code == 200
        ready_doc = client.get("/health/ready").json
        assert ready_doc["checks"]["startup:ready"][0]["status"] == "fail"
    finally:
        monitor.close()


def test_ready_can_be_kept_out_of_web_readiness(repl_db) -> None:
    monitor = SlotMonitor(repl_db.dsn(), slots=["missing"], ready_fails_on=None)
    with monitor:
        assert monitor.check().worst is Verdict.LOST
        assert monitor.ready() is True
    warn_only = SlotMonitor(repl_db.dsn(), slots=["missing"], ready_fails_on=Verdict.WARN)
    with warn_only:
        warn_only.check()
        assert warn_only.ready() is False
