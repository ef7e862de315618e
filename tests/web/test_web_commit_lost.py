"""The example services when COMMIT replies are lost (real service, proxy, Postgres).

The proxy lets every COMMIT through, waits for the server's answer (the row
is committed) and closes the connection instead of passing it on. The
FastAPI and Flask examples write with an ordinary ``session.commit()`` on a
hardened engine: the lost COMMIT is resolved with ``pg_xact_status()``, so
the client gets its 201 and the row exists exactly once (the table's
``lead_id`` is not unique: a blind replay would show as two rows). Without
outlast the client gets a 500 for a write that was in fact applied.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest
from conftest import Service

CUT_COMMIT = {"pattern": r"^\s*COMMIT\b", "wait_reply": True}


def _stored(svc: Service, ids: list[str]) -> Counter[str]:
    for _ in range(3):  # uvicorn drops a keep-alive connection after an unhandled error
        try:
            response = svc.client.get("/api/leads", params={"ids": ",".join(ids)})
            break
        except httpx.TransportError:
            continue
    assert response.status_code == 200, response.text
    return Counter(row["id"] for row in response.json())


def test_with_outlast_a_lost_commit_is_resolved_not_replayed(
    service_factory: Callable[..., Service], pg_proxy: Any
) -> None:
    svc = service_factory("fastapi")
    base = f"cut-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(f"{base}-warm")[0].status_code == 201
    ids = [f"{base}-{i}" for i in range(5)]
    with pg_proxy.fault("cut_after", **CUT_COMMIT):  # every COMMIT's reply is lost
        answers = [svc.post_lead(i)[0] for i in ids]
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    row_ids = [a.json()["row_id"] for a in answers]
    assert len(set(row_ids)) == 5
    assert _stored(svc, ids) == Counter(dict.fromkeys(ids, 1))  # applied once, none doubled
    assert "Traceback" not in svc.log(), svc.log()[-3000:]


def test_without_outlast_a_lost_commit_is_a_500_for_an_applied_write(
    service_factory: Callable[..., Service], pg_proxy: Any
) -> None:
    svc = service_factory("fastapi", enabled=False)
    lead = f"cut-plain-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(f"{lead}-warm")[0].status_code == 201
    with pg_proxy.fault("cut_after", **CUT_COMMIT):
        try:
            status = svc.post_lead(lead)[0].status_code
        except httpx.TransportError:
            status = None  # uvicorn may drop the connection after the error
    assert status in (500, None)
    assert _stored(svc, [lead]) == Counter({lead: 1})  # yet it was applied


@pytest.mark.parametrize("framework", ["flask"])  # Django: test_django_drf.py
def test_flask_and_django_resolve_a_lost_commit_and_answer_201(
    framework: str,
    service_factory: Callable[..., Service],
    pg_proxy: Any,
    pg_server: Any,
    web_database: str,
) -> None:
    """Flask's ``db.session.commit()`` and Django's ``runtime().transaction`` resolve it too."""
    svc = service_factory(framework)
    base = f"cut-{framework}-{uuid.uuid4().hex[:8]}"
    assert svc.post_lead(f"{base}-warm")[0].status_code == 201
    ids = [f"{base}-{i}" for i in range(3)]
    with pg_proxy.fault("cut_after", **CUT_COMMIT):
        answers = [svc.post_lead(i)[0] for i in ids]
    assert [a.status_code for a in answers] == [201] * 3, [a.text for a in answers]
    table, key = ("leads", "id") if framework == "django" else ("lead_writes", "lead_id")
    with psycopg.connect(pg_server.dsn(web_database), autocommit=True) as conn:
        rows = conn.execute(f"SELECT {key} FROM {table} WHERE {key} = ANY(%s)", (ids,)).fetchall()
    assert sorted(r[0] for r in rows) == ids
    assert "Traceback" not in svc.log(), svc.log()[-3000:]
