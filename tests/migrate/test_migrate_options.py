"""Pure logic of outlast.migrate: options, environment, SQL splitting, SQL folders, holders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import outlast
import outlast.migrate as migrate
from outlast.migrate._settings import Settings, resolve_role
from outlast.migrate._sql import read_folder
from outlast.migrate._sqlsplit import split_statements


def _settings(**changes: object) -> Settings:
    options: dict[str, object] = {
        "role": None,
        "wait": None,
        "on_timeout": "fail",
        "lock": None,
        "name": "default",
        "lease": 10.0,
        "poll": 0.5,
        "connect_timeout": 5.0,
        "lock_timeout": None,
        "statement_timeout": None,
        "environ": {},
    }
    options.update(changes)
    return Settings.build(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environ", "role", "source"),
    [
        ({}, "migrate", "default"),
        ({"OUTLAST_MIGRATE": "1"}, "migrate", "OUTLAST_MIGRATE"),
        ({"OUTLAST_MIGRATE": "0"}, "wait", "OUTLAST_MIGRATE"),
        ({"RUN_MIGRATIONS": "0"}, "wait", "RUN_MIGRATIONS"),
        ({"RUN_MIGRATIONS": " true "}, "migrate", "RUN_MIGRATIONS"),
        ({"OUTLAST_MIGRATE": "wait", "RUN_MIGRATIONS": "1"}, "wait", "OUTLAST_MIGRATE"),
        ({"OUTLAST_MIGRATE": "", "RUN_MIGRATIONS": "0"}, "wait", "RUN_MIGRATIONS"),
    ],
)
def test_role_comes_from_the_environment(environ: dict[str, str], role: str, source: str) -> None:
    assert resolve_role(None, environ) == (role, source)


def test_an_explicit_role_wins_over_the_environment() -> None:
    assert resolve_role("wait", {"RUN_MIGRATIONS": "1"}) == ("wait", "argument")


@pytest.mark.parametrize("value", ["maybe", "2", "api"])
def test_a_bad_role_variable_is_named(value: str) -> None:
    with pytest.raises(outlast.ConfigurationError, match="RUN_MIGRATIONS"):
        resolve_role(None, {"RUN_MIGRATIONS": value})


def test_settings_take_seconds_or_timedeltas() -> None:
    s = _settings(wait=timedelta(minutes=2), lease=timedelta(seconds=8), poll=0.25)
    assert (s.wait, s.lease, s.poll, s.heartbeat) == (120.0, 8.0, 0.25, 2.0)
    assert _settings(environ={"OUTLAST_MIGRATE_WAIT": "30"}).wait == 30.0
    assert _settings(wait=5, environ={"OUTLAST_MIGRATE_WAIT": "30"}).wait == 5.0
    assert _settings(environ={"OUTLAST_MIGRATE_LOCK": "lease"}).lock == "lease"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"wait": -1}, "wait"),
        ({"wait": float("nan")}, "wait"),
        ({"wait": "60"}, "wait"),
        ({"lease": 1}, "lease"),
        ({"poll": 6}, "poll"),
        ({"poll": 0}, "poll"),
        ({"on_timeout": "ignore"}, "on_timeout"),
        ({"lock": "table"}, "lock"),
        ({"role": "api"}, "role"),
        ({"name": ""}, "name"),
        ({"lock_timeout": -0.5}, "lock_timeout"),
        ({"environ": {"OUTLAST_MIGRATE_WAIT": "soon"}}, "OUTLAST_MIGRATE_WAIT"),
        ({"environ": {"OUTLAST_MIGRATE_LOCK": "row"}}, "OUTLAST_MIGRATE_LOCK"),
    ],
)
def test_bad_options_are_configuration_errors_naming_the_option(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(outlast.ConfigurationError, match=words):
        _settings(**changes)


def test_a_malformed_dsn_never_shows_its_password(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    runner = migrate.SqlRunner(tmp_path)
    with pytest.raises(outlast.ConfigurationError) as info:
        migrate.run(runner, dsn="postgresql://app:s3cr3t-pw@db:notaport/app")
    assert "s3cr3t-pw" not in str(info.value)


def test_no_database_at_all_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OUTLAST_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    with pytest.raises(outlast.ConfigurationError, match="DATABASE_URL"):
        migrate.run(migrate.SqlRunner(tmp_path))


# ------------------------------------------------------------------ splitting


def test_split_keeps_quotes_dollar_bodies_and_comments_whole() -> None:
    text = """
    -- a comment; with a semicolon
    CREATE TABLE t (x text DEFAULT 'a;b', "we;ird" int);
    /* block; /* nested; */ still comment; */
    CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $fn$
    BEGIN RETURN 'x;y'; END;
    $fn$;
    SELECT $$;$$, E'it\\'s;', 'it''s;';
    CREATE INDEX CONCURRENTLY i ON t (x)
    """
    statements = split_statements(text)
    assert len(statements) == 4
    assert statements[0].endswith('"we;ird" int)')
    assert "RETURN 'x;y'; END;" in statements[1]
    assert statements[2].startswith("SELECT $$;$$")
    assert statements[3] == "CREATE INDEX CONCURRENTLY i ON t (x)"


def test_split_drops_empty_and_comment_only_pieces() -> None:
    assert split_statements(";;  -- nothing\n; /* x */ ;") == []
    assert split_statements("SELECT $1::int; SELECT a$b FROM t") == [
        "SELECT $1::int",
        "SELECT a$b FROM t",
    ]


# ------------------------------------------------------------------ sql folder


def test_sql_folder_orders_numerically_and_reads_the_transaction_marker(tmp_path: Path) -> None:
    (tmp_path / "10_later.sql").write_text("SELECT 10;")
    (tmp_path / "2_early.sql").write_text("-- outlast:no-transaction\nCREATE INDEX CONCURRENTLY")
    (tmp_path / "README.md").write_text("not a migration")
    files = read_folder(tmp_path)
    assert [(f.version, f.name, f.transactional) for f in files] == [
        ("2", "early", False),
        ("10", "later", True),
    ]


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["create_leads.sql"], "must be named"),
        (["1_a.sql", "001_b.sql"], "same number"),
    ],
)
def test_a_broken_sql_folder_is_a_configuration_error(
    tmp_path: Path, names: list[str], words: str
) -> None:
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(outlast.ConfigurationError, match=words):
        migrate.SqlRunner(tmp_path)


def test_a_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(outlast.ConfigurationError, match="no migrations folder"):
        migrate.SqlRunner(tmp_path / "missing")


# ------------------------------------------------------------------ holders and states


def test_holder_reads_the_leaders_acquisition_time_from_its_name() -> None:
    connected = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    holder = migrate.Holder.from_row(
        4242, "outlast-migrate leader api-1:7 @1767270000", "10.0.0.5", 53412, connected
    )
    assert holder.since == datetime.fromtimestamp(1767270000, tz=UTC)
    text = holder.describe()
    assert "pid=4242" in text
    assert "client=10.0.0.5:53412" in text
    assert "since=2026-01-01T12:20:00Z" in text
    other = migrate.Holder.from_row(7, "psql", None, None, connected)
    assert other.since == connected
    assert other.describe() == 'pid=7 app="psql" since=2026-01-01T12:00:00Z'


def test_schema_state_descriptions() -> None:
    pending = migrate.SchemaState(current=("0002",), target=("0004",), pending=("0003", "0004"))
    assert pending.describe() == "2 pending (database at 0002, head 0004)"
    assert not pending.at_target
    ahead = migrate.SchemaState(current=("0009",), target=("0004",), pending=(), unknown=("0009",))
    assert ahead.at_target
    assert ahead.ahead
    assert ahead.describe().startswith("ahead: database at 0009")


def test_advisory_keys_are_stable_and_distinct() -> None:
    assert migrate.advisory_key("default") == migrate.advisory_key("default")
    assert migrate.advisory_key("default") != migrate.advisory_key("billing")
    assert migrate.advisory_key("default")[0] == 0x6F75746C


def test_public_face_is_sorted_and_imports_no_tool() -> None:
    import subprocess
    import sys

    assert list(migrate.__all__) == sorted(migrate.__all__)
    for name in migrate.__all__:
        obj = getattr(migrate, name)
        if isinstance(obj, type):
            assert obj.__module__ == "outlast.migrate", name
    code = (
        "import sys, outlast.migrate\n"
        "heavy = {'sqlalchemy', 'psycopg', 'alembic', 'django', 'psycopg_pool'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
