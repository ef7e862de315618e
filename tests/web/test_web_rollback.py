"""After a database fault the Flask integration rolls the session back (real server, real database).

Each app runs under werkzeug's server on loopback, in one server thread, so
a ``scoped_session`` that is never removed is the very same session from one
request to the next. A view writes a row in the session, then hits a real
database fault: a ``statement_timeout`` (the transaction is aborted, the
connection stays) or its own backend terminated (57P01, the connection is
gone). Afterwards:

- the session was rolled back exactly once (SQLAlchemy's
  ``after_soft_rollback`` event, which fires for every ``Session.rollback()``);
- the same session serves the next request (without the rollback it raises
  ``PendingRollbackError`` / "current transaction is aborted");
- the write is absent.

A control app without ``session=`` shows the checks can fail.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import scoped_session, sessionmaker
from werkzeug.serving import make_server

import outlast
from outlast.flask import Outlast

TABLE = "CREATE TABLE IF NOT EXISTS rollback_probe (id text PRIMARY KEY)"
FAULTS = {
    # 57014: the transaction is aborted, the connection stays usable.
    "timeout": ["SET LOCAL statement_timeout = '50ms'", "SELECT pg_sleep(2)"],
    # 57P01: the server ends this very session (a restart, a failover).
    "terminated": ["SELECT pg_terminate_backend(pg_backend_pid())"],
}


def _guard(name: str) -> outlast.Guard:
    # A lenient breaker: the request after the fault must reach the session.
    return outlast.Guard(name, breaker=outlast.Breaker(failure_threshold=100), listeners=())


def _routes(app: Any, session: Any) -> None:
    """``POST /write/<id>/<fault>`` writes a row, then hits `fault`; ``GET /has/<id>``."""

    @app.post("/write/<lead>/<fault>")
    def write(lead: str, fault: str) -> Any:
        session.execute(text("INSERT INTO rollback_probe (id) VALUES (:id)"), {"id": lead})
        for statement in FAULTS[fault]:
            session.execute(text(statement))
        session.commit()
        return {"written": lead}

    @app.get("/has/<lead>")
    def has(lead: str) -> Any:
        n = session.execute(
            text("SELECT count(*) FROM rollback_probe WHERE id = :id"), {"id": lead}
        ).scalar_one()
        session.commit()
        return {"count": n}


@pytest.fixture
def serve() -> Iterator[Callable[[Any], httpx.Client]]:
    servers: list[Any] = []
    clients: list[httpx.Client] = []

    def start(app: Any) -> httpx.Client:
        server = make_server("127.0.0.1", 0, app, threaded=False)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.shutdown()


def _count_soft_rollbacks(target: Any) -> list[int]:
    seen: list[int] = []
    event.listen(target, "after_soft_rollback", lambda session, previous: seen.append(1))
    return seen


@pytest.fixture
def plain_session(pg_database: Any) -> Iterator[scoped_session[Any]]:
    import outlast.sqlalchemy

    engine = outlast.sqlalchemy.create_engine(pg_database.url())
    with engine.begin() as conn:
        conn.exec_driver_sql(TABLE)
    session = scoped_session(sessionmaker(bind=engine))
    yield session
    session.remove()
    engine.dispose()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_plain_scoped_session_is_rolled_back_after_a_fault(
    fault: str, plain_session: scoped_session[Any], serve: Callable[[Any], httpx.Client]
) -> None:
    from flask import Flask

    app = Flask("rollback-plain")
    Outlast(app, guard=_guard(f"rollback-plain-{fault}"), session=plain_session)
    _routes(app, plain_session)
    rollbacks = _count_soft_rollbacks(plain_session)
    client = serve(app)
    lead = f"{fault}-{uuid.uuid4().hex[:8]}"

    response = client.post(f"/write/{lead}/{fault}")
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "SERVICE_UNAVAILABLE"
    assert len(rollbacks) == 1  # by the integration, once
    after = client.get(f"/has/{lead}")  # the same session, in the same server thread
    assert after.status_code == 200, after.text
    assert after.json() == {"count": 0}  # the write before the fault is gone
    assert len(rollbacks) == 1


def test_without_session_the_next_request_on_that_session_fails(
    plain_session: scoped_session[Any], serve: Callable[[Any], httpx.Client]
) -> None:
    """The control: what the checks above catch when nobody rolls back."""
    from flask import Flask

    app = Flask("rollback-control")
    Outlast(app, guard=_guard("rollback-control"))  # no session=
    _routes(app, plain_session)
    rollbacks = _count_soft_rollbacks(plain_session)
    client = serve(app)
    lead = f"control-{uuid.uuid4().hex[:8]}"
    assert client.post(f"/write/{lead}/timeout").status_code == 503
    assert rollbacks == []
    after = client.get(f"/has/{lead}")
    assert after.status_code == 500  # "current transaction is aborted": a generic 500
    assert after.json()["error"] == "INTERNAL_ERROR"


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_flask_sqlalchemy_db_session_is_rolled_back_after_a_fault(
    fault: str, pg_database: Any, serve: Callable[[Any], httpx.Client]
) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    app = Flask("rollback-fsa")
    app.config["SQLALCHEMY_DATABASE_URI"] = pg_database.url()
    db = SQLAlchemy(app)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql(TABLE)
    Outlast(app, guard=_guard(f"rollback-fsa-{fault}"))  # finds db.session on the app
    _routes(app, db.session)
    rollbacks = _count_soft_rollbacks(db.session)
    client = serve(app)
    lead = f"fsa-{fault}-{uuid.uuid4().hex[:8]}"
    try:
        response = client.post(f"/write/{lead}/{fault}")
        assert response.status_code == 503, response.text
        assert len(rollbacks) == 1  # Flask-SQLAlchemy's own teardown only closes it
        after = client.get(f"/has/{lead}")
        assert after.status_code == 200, after.text
        assert after.json() == {"count": 0}
        assert len(rollbacks) == 1
    finally:
        with app.app_context():
            db.engine.dispose()
