"""A real Flask and FastAPI service expose /metrics that tell an outage as it happens.

The services (tests/metrics/metrics_apps) run under gunicorn and uvicorn on
loopback, talk to the embedded PostgreSQL through the chaos proxy, run a
supervised loop, and serve ``/metrics`` with ``outlast.prometheus.install``.
The test reads the real exposition format before, during and after an outage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from metrics_kit import scrape, service, value, wait_for

pytestmark = pytest.mark.slow

GUARD = {"guard": "metrics"}


@pytest.mark.parametrize("framework", ["flask", "fastapi"])
def test_metrics_follow_an_outage_and_answer_during_it(
    framework: str, pg_proxy: Any, pg_database: Any, tmp_path: Path
) -> None:
    url = pg_proxy.url(pg_database.name, driver="psycopg")
    with service(framework, url, tmp_path / "service.log") as client:
        for _ in range(5):
            assert client.get("/api/count").status_code == 200
        samples = wait_for(
            client,
            lambda s: (
                value(s, "outlast_task_up", task="pinger") == 1
                and value(s, "db_client_operation_duration_seconds_count", **GUARD) > 0
            ),
        )
        assert value(samples, "outlast_database_up", **GUARD) == 1
        assert value(samples, "outlast_breaker_state", state="closed", **GUARD) == 1
        used_or_idle = value(samples, "db_client_connection_count", guard="metrics")
        assert used_or_idle >= 1
        assert value(samples, "db_client_connection_max", guard="metrics") >= 1

        pg_proxy.add_fault("down")  # refuse new connections, reset the open ones
        try:
            statuses = [client.get("/api/count").status_code for _ in range(12)]
            assert 503 in statuses and 500 not in statuses, statuses
            during = wait_for(
                client,
                lambda s: (
                    value(s, "outlast_database_up", **GUARD) == 0
                    and value(s, "outlast_calls_rejected_total", **GUARD) > 0
                ),
            )
            # /metrics itself is never behind the breaker.
            assert client.get("/metrics").status_code == 200
            assert value(during, "outlast_breaker_transitions_total", to="open", **GUARD) >= 1
            assert value(during, "outlast_faults_total", kind="unavailable", **GUARD) > 0
            assert value(during, "outlast_web_fault_responses_total", status="503", **GUARD) > 0
            assert value(during, "outlast_database_outages_total", **GUARD) >= 1
        finally:
            pg_proxy.clear()
        after = wait_for(client, lambda s: value(s, "outlast_database_up", **GUARD) == 1)
        assert value(after, "outlast_breaker_transitions_total", to="closed", **GUARD) >= 1
        assert client.get("/api/count").status_code == 200
        _, text = scrape(client)
        # Nothing but bounded words in labels: no SQL, host, port or DSN.
        for leak in ("SELECT", "127.0.0.1", str(pg_proxy.port), "postgresql://", "pg_class"):
            assert leak not in text, leak
