"""``outlast slots``: the table, JSON and Prometheus outputs, offset checks, and exit codes.

Exit codes: 0 ok, 1 warn, 2 critical or lost (or an unsafe offset), 3 could not check.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from repl_kit import Consumer, sql, switch_wal, wait_until

from outlast.cli import main
from outlast.replication import alert_rules
from outlast.testing import free_port


def _slots(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["slots", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ok_slot_table_exits_0(repl_db, capsys) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    code, out, _ = _slots(capsys, "--dsn", repl_db.dsn())
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("PostgreSQL 18") and "max_slot_wal_keep_size=unlimited" in lines[0]
    assert lines[1].split()[:4] == ["slot", "type", "active", "wal_status"]
    assert lines[2].split()[:4] == ["cdc", "logical", "no", "reserved"]
    assert "note: max_slot_wal_keep_size is unlimited" in out
    assert lines[-1] == "worst: ok"


def test_warn_exits_1_and_lost_or_missing_exits_2(repl_db, capsys) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    switch_wal(repl_db.dsn(), 2)
    code, out, _ = _slots(capsys, "--dsn", repl_db.dsn(), "--warn-bytes", "8MB")
    assert code == 1, out
    assert "cdc: retained" in out and "worst: warn" in out
    code, out, _ = _slots(capsys, "--dsn", repl_db.dsn(), "--critical-bytes", "8MB")
    assert code == 2, out
    code, out, _ = _slots(capsys, "--dsn", repl_db.dsn(), "--slot", "cdc", "--slot", "gone")
    assert code == 2
    assert "gone: slot does not exist" in out and "worst: lost" in out


def test_json_and_prometheus_formats(repl_db, capsys) -> None:
    sql(repl_db.dsn(), "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    code, out, _ = _slots(
        capsys, "--dsn", repl_db.dsn(), "--format", "json", "--sample", "0.2", "--wal-budget", "1GB"
    )
    assert code == 0
    doc = json.loads(out)
    assert doc["worst"] == "ok" and doc["server"]["wal_rate"] is not None
    (slot,) = doc["slots"]
    assert slot["name"] == "cdc" and slot["limit_bytes"] == 2**30
    assert slot["restart_lsn"].count("/") == 1
    code, out, _ = _slots(capsys, "--dsn", repl_db.dsn(), "--format", "prometheus")
    assert code == 0
    assert "# TYPE outlast_replication_slot_retained_bytes gauge" in out
    labels = f'slot="cdc",slot_type="logical",database="{repl_db.name}"'
    assert f"outlast_replication_slot_active{{{labels}}} 0" in out


def test_offset_checks(repl_db, capsys) -> None:
    dsn = repl_db.dsn()
    sql(dsn, "CREATE TABLE orders (id int PRIMARY KEY)")
    sql(dsn, "SELECT pg_create_logical_replication_slot('cdc', 'test_decoding')")
    sql(dsn, "INSERT INTO orders VALUES (1)")
    consumer = Consumer(dsn, "cdc")
    with consumer:
        wait_until(lambda: consumer.changes >= 1, "a change")
        consumer.store = False
        sql(dsn, "INSERT INTO orders VALUES (2)")
        wait_until(lambda: consumer.changes >= 2, "another change")
    stored = str(consumer.stored)
    code, out, _ = _slots(capsys, "--dsn", dsn, "--slot", "cdc", "--offset", str(consumer.acked))
    assert code == 0, out
    assert out.startswith(f"slot cdc: offset {consumer.acked} is safe")
    code, out, _ = _slots(capsys, "--dsn", dsn, "--slot", "cdc", "--offset", stored)
    assert code == 2, out
    assert "is changes_skipped" in out
    assert "trust_offset       fail" in out and "(loses changes, silently)" in out
    code, out, _ = _slots(
        capsys, "--dsn", dsn, "--slot", "cdc", "--offset", stored, "--format", "json"
    )
    doc = json.loads(out)
    assert code == 2 and doc["verdict"] == "changes_skipped" and not doc["safe"]
    assert doc["strategies"]["trust_slot"]["action"] == "adopt_slot"
    code, _, err = _slots(capsys, "--dsn", dsn, "--offset", stored)
    assert code == 3 and "exactly one --slot" in err
    code, _, err = _slots(capsys, "--dsn", dsn, "--slot", "cdc", "--offset", "soon")
    assert code == 3 and "not an LSN" in err


def test_cannot_check_exits_3_without_leaking_the_password(capsys, monkeypatch) -> None:
    monkeypatch.delenv("OUTLAST_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code, _, err = _slots(capsys)
    assert code == 3 and "no DSN" in err
    secret = "hunter2-secret"
    dead = f"host=127.0.0.1 port={free_port()} user=u password={secret} connect_timeout=2"
    code, out, err = _slots(capsys, "--dsn", dead)
    assert code == 3 and "database unavailable (unavailable: connection_refused)" in err
    code, out, err = _slots(capsys, "--dsn", f"postgresql://u:{secret}@host:notaport/db")
    assert code == 3 and "port" in err
    for text in (out, err):
        assert secret not in text
    code, _, err = _slots(capsys, "--dsn", dead, "--warn-fraction", "2")
    assert code == 3 and "warn_fraction" in err


def test_dsn_from_environment_and_alert_rules(repl_db, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OUTLAST_DSN", repl_db.dsn())
    code, out, _ = _slots(capsys)
    assert code == 0 and "(no replication slots)" in out
    code, out, _ = _slots(capsys, "--alert-rules")
    assert code == 0 and out == alert_rules()


def test_real_process_exit_code(repl_db) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "outlast", "slots", "--dsn", repl_db.dsn(), "--slot", "gone"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "worst: lost" in result.stdout
