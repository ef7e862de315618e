"""``outlast migrate``: exit codes, log lines, JSON, and no password anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from migrate_kit import ALEMBIC_INI, ALEMBIC_REVISIONS, SQL_DIR, base_env

import outlast.migrate as migrate

SECRET = "s3cr3t-pw"


def _url(pg_database: Any) -> str:
    # Trust authentication ignores the password, so it can travel everywhere.
    server = pg_database.server
    return f"postgresql://postgres:{SECRET}@{server.host}:{server.port}/{pg_database.name}"


def _cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "outlast", "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert SECRET not in result.stdout + result.stderr
    return result


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def test_alembic_upgrade_then_nothing_to_do(pg_database: Any) -> None:
    url = _url(pg_database)
    env = base_env(pg_database.dsn())
    first = _cli(
        "--dsn", url, "--json", "--", "alembic", "-c", str(ALEMBIC_INI), "upgrade", "head", env=env
    )
    assert first.returncode == 0, first.stderr
    assert _json(first)["applied"] == list(ALEMBIC_REVISIONS)
    for line in (
        "[MIGRATION] acquired lock=advisory holder=",
        "[MIGRATION] applied revision=0004 (4/4) holder=",
        "[MIGRATION] released lock=advisory holder=",
    ):
        assert line in first.stderr
    second = _cli(
        "--dsn", url, "--json", "--", "alembic", "-c", str(ALEMBIC_INI), "upgrade", "head", env=env
    )
    assert second.returncode == 0
    assert _json(second)["outcome"] == "at_head"
    assert "[MIGRATION] skipped reason=at_head at head 0004" in second.stderr
    assert "acquired" not in second.stderr


def test_role_and_dsn_come_from_the_environment(pg_database: Any) -> None:
    env = base_env(pg_database.dsn(), DATABASE_URL=_url(pg_database), RUN_MIGRATIONS="0")
    waiting = _cli("--wait", "1", "--json", "--sql", str(SQL_DIR), env=env)
    assert waiting.returncode == 1
    assert "role wait" in waiting.stderr
    assert "4 pending (database at base, head 0004)" in waiting.stderr
    env["RUN_MIGRATIONS"] = "1"
    migrating = _cli("--json", "--sql", str(SQL_DIR), env=env)
    assert migrating.returncode == 0, migrating.stderr
    assert _json(migrating)["outcome"] == "applied"


def test_timeout_names_the_holder_and_exits_1(pg_database: Any) -> None:
    classid, objid = migrate.advisory_key("default")
    with psycopg.connect(pg_database.dsn(), autocommit=True, application_name="deploy-42") as conn:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (classid, objid))
        result = _cli(
            "--dsn",
            _url(pg_database),
            "--wait",
            "1.5",
            "--json",
            "--sql",
            str(SQL_DIR),
            env=base_env(pg_database.dsn()),
        )
        pid = conn.info.backend_pid
    assert result.returncode == 1
    assert f'lock held by pid={pid} app="deploy-42"' in result.stderr
    assert "[MIGRATION] waiting role=migrate reason=lock_held" in result.stderr
    assert _json(result)["holder"]["pid"] == pid


def test_a_failing_migration_exits_3(pg_database: Any, tmp_path: Path) -> None:
    (tmp_path / "0001_bad.sql").write_text("CREATE TABLE x (a int); SELECT * FROM missing_table;")
    result = _cli("--dsn", _url(pg_database), "--json", "--sql", str(tmp_path), env=base_env(""))
    assert result.returncode == 3
    assert "a migration failed: undefined_table" in result.stderr
    assert _json(result)["reason"] == "undefined_table"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--dsn", f"postgresql://u:{SECRET}@h:port/db", "--sql", str(SQL_DIR)], "malformed DSN"),
        (["--dsn", "host=h", "--sql", str(SQL_DIR), "--django"], "exactly one"),
        (["--dsn", "host=h"], "exactly one"),
        (["--dsn", "host=h", "--", "alembic", "downgrade", "-1"], "only 'alembic upgrade"),
        (["--dsn", "host=h", "--", "flyway", "migrate"], "Alembic command line"),
        (["--dsn", "host=h", "--sql", "/nonexistent/migrations"], "no migrations folder"),
        (["--dsn", "host=h", "--lease", "1", "--sql", str(SQL_DIR)], "lease"),
    ],
)
def test_usage_errors_exit_2_without_a_traceback(args: list[str], words: str) -> None:
    result = _cli(*args, env=base_env(""))
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
