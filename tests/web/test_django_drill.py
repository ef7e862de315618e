"""``outlast drill`` against the Django REST framework example, as a user would run it.

No wrapper: the drill logs in (``POST /api/auth/token/``, DRF's
``obtain_auth_token``), sends the token as ``Authorization: Token ...``, writes
JSON from a template through the viewset's ordinary ``serializer.save()``
(``ATOMIC_REQUESTS``), reads every write back through the paginated list and by
its own id, and goes through every outage the chaos proxy can produce, a lost
COMMIT included. The service runs with outlast's documented defaults (no Guard
of its own: the middleware's), under gunicorn sync workers and under uvicorn.

Pass means: no 5xx but 503s, every 503 with ``Retry-After``, no write reported
failed that was stored, lost COMMITs resolved or ``OUTCOME_UNKNOWN``, recovery
within 1 s of every fault, and no traceback in the server log.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from drf_kit import DrfService, prepare, start
from test_django_drf import drf_database  # noqa: F401 - the module's migrated database

from outlast.chaos import AdminServer

PASSWORD = "drill pa:ss@w'rd"
SCENARIOS = "down,blackhole,reset,freeze,terminate,neon_endpoint_disabled,flapping,commit_lost"
DRILL_BUDGET = 5.0
SERVICE_BUDGET = 4.5  # answers a little under the client's budget, as the demo's service
# Seconds each fault lasts: 3 keeps CI short; the README's table used 8 (the drill's default).
DURATION = float(os.environ.get("OUTLAST_DRILL_DURATION", "3"))


def drill_argv(service: DrfService, admin: AdminServer, *, duration: float) -> list[str]:
    return [
        "drill", "--url", f"http://127.0.0.1:{service.port}", "--proxy-admin", admin.url,
        "--read", "GET /api/leads/", "--write", "POST /api/leads/", "--ping", "GET /api/ping/",
        "--readback", "GET /api/leads/", "--read-one", "GET /api/leads/{id}/",
        "--write-body", '{"name": "drill {id}", "email": "{id}@example.com"}',
        "--write-id", "id",
        "--login", "POST /api/auth/token/",
        "--login-body", json.dumps({"username": "drill", "password": PASSWORD}),
        "--auth-header", "Authorization: Token {token}",
        "--scenarios", SCENARIOS, "--budget", str(DRILL_BUDGET),
        "--duration", str(duration), "--warmup", "1.5", "--max-recovery", "1", "--json",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gunicorn-sync", "uvicorn"])
def test_the_drf_example_passes_the_full_drill(
    kind: str,
    pg_server: Any,
    pg_proxy: Any,
    drf_database: tuple[str, str],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from outlast.cli import main

    name, _ = drf_database
    token = prepare(pg_server.url(name, driver="psycopg"), password=PASSWORD)
    # Eight sync workers: one per concurrent stream of the drill's traffic.
    service = start(
        kind,
        pg_proxy.url(name, driver="psycopg"),
        token,
        tmp_path,
        budget=SERVICE_BUDGET,
        workers=8,
    )
    try:
        with AdminServer([pg_proxy], listen=("127.0.0.1", 0)) as admin:
            code = main(drill_argv(service, admin, duration=DURATION))
        out = capsys.readouterr().out
    finally:
        service.stop()
    results = json.loads(out)
    print(f"\n{kind}, {DURATION:g} s faults: writes {json.dumps(results['writes'])}")
    for s in results["scenarios"]:
        budget = next(c["detail"] for c in s["checks"] if c["name"] == "budget")
        print(
            f"  {s['name']:24} {s['verdict']:14} 503s={s['outcomes'].get('503', 0):<4}"
            f" first 2xx after {s['recovery_seconds']} s, {budget},"
            f" hits {[w['hits'] for w in s['fault_windows']]}"
        )
    failed = {
        s["name"]: [c for c in s["checks"] if c["passed"] is False]
        for s in results["scenarios"]
        if s["verdict"] != "pass"
    }
    assert code == 0 and results["passed"], (failed, results["error"])
    writes = results["writes"]
    assert writes["failed_present"] == 0 and writes["lost"] == 0 and writes["duplicated"] == 0
    assert writes["acknowledged"] > 0 and writes["unchecked"] == 0
    for s in results["scenarios"]:
        assert s["exercised"] is not False, s["name"]
        assert s["recovery_seconds"] is not None and s["recovery_seconds"] <= 1.0, s
        assert "5xx" not in s["outcomes"], s
    log = service.log()
    assert "Traceback" not in log, log[-3000:]
