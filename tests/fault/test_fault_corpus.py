"""The generated classification corpus: every driver x every fault we can make for real.

Not a hand-picked list of errors: every fault the chaos proxy can inject (each
network fault at connect and under a statement, each login-rejection preset,
``terminate``, a cut at each message of a transaction, dropped or forwarded,
with or without the reply), every way the server can go (stopped fast or
immediately, killed, restarted under an idle connection, refusing while
down), the server's own timeouts and limits, authentication, TLS and DSN
errors, PgBouncer's errors and a remote server behind postgres_fdw/dblink --
each played against psycopg 3, psycopg2, asyncpg and SQLAlchemy over each,
and judged: no permanent fault called transient, no outage called permanent
(nor uncounted), server-side timeouts and conflicts as such, a remote's
failure not this database's outage, and faults that only slow things down
raising nothing.

It runs on a private embedded server (it stops, kills and reconfigures it)
with a password role in its pg_hba.conf, and through private chaos proxies.

    .venv/bin/python -m pytest tests/fault/test_fault_corpus.py -s

prints the number of cases; with ``OUTLAST_FAULT_CORPUS=corpus.jsonl`` in the
environment it also writes each case as a JSON line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from corpus_kit import (
    DRIVERS,
    LIBPQ_DRIVERS,
    Holder,
    Scenario,
    Tally,
    Target,
    run_scenario,
)
from tls_kit import self_signed_certificate

from outlast.chaos import LOGIN_PRESETS, Proxy
from outlast.testing import PGBOUNCER_PASSWORD as PASSWORD
from outlast.testing import EmbeddedPostgres, PgBouncer, pgbouncer_binary
from outlast.testing._postgres import free_port

pytestmark = pytest.mark.slow

ROLE_PASSWORD = "corpus-pw:@#?%"
SLEEP = "SELECT pg_sleep(3)"


@dataclass
class World:
    server: EmbeddedPostgres
    proxy: Proxy
    remote_proxy: Proxy
    tally: Tally
    pool: ThreadPoolExecutor

    @property
    def direct(self) -> Target:
        return Target(self.server.host, self.server.port, dbname="corpus")

    @property
    def proxied(self) -> Target:
        return Target("127.0.0.1", self.proxy.port, dbname="corpus")

    def dsn(self, **params: object) -> str:
        return self.server.dsn("corpus", **params)

    def play(self, scenarios: list[Scenario]) -> int:
        n = 0
        for scenario in scenarios:
            self.proxy.clear()
            self.proxy.close_connections()
            verdicts = run_scenario(scenario, self.pool)
            self.tally.add(verdicts)
            n += len(verdicts)
        self.proxy.clear()
        return n


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    server = EmbeddedPostgres(settings={"max_connections": 100})
    server.initialize()
    hba = server.data_dir / "pg_hba.conf"
    # A role that must give its password; everything else keeps trust.
    hba.write_text(
        "host all pw_user 127.0.0.1/32 scram-sha-256\n" + hba.read_text(),
        encoding="utf-8",
    )
    server.start()
    tally = Tally()
    pool = ThreadPoolExecutor(max_workers=len(DRIVERS) * 2, thread_name_prefix="corpus")
    try:
        server.psql("CREATE DATABASE corpus")
        with psycopg.connect(server.dsn("corpus"), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE pw_user LOGIN PASSWORD '{ROLE_PASSWORD}'")
            conn.execute("CREATE ROLE limited LOGIN CONNECTION LIMIT 1")
            conn.execute("CREATE TABLE corpus_t (id int PRIMARY KEY, v int)")
            conn.execute("INSERT INTO corpus_t VALUES (1, 0), (2, 0)")
            conn.execute("GRANT ALL ON corpus_t TO pw_user, limited")
            conn.execute(
                "CREATE FUNCTION corpus_deep(n int) RETURNS int LANGUAGE plpgsql"
                " AS $$ BEGIN RETURN corpus_deep(n + 1); END $$"
            )
        with (
            Proxy(("127.0.0.1", 0), (server.host, server.port), name="corpus") as proxy,
            Proxy(("127.0.0.1", 0), (server.host, server.port), name="remote") as remote,
        ):
            yield World(server, proxy, remote, tally, pool)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        server.cleanup()


def _assert_judged(world: World, n: int, group: str) -> None:
    print(f"\n{group}: {n} cases")
    problems = [p for p in world.tally.problems() if p.startswith(group + " / ")]
    assert not problems, "\n".join(problems)
    assert n > 0


# ---------------------------------------------------------------- network


def test_network_faults(world: World) -> None:
    p = world.proxy
    scenarios = [
        Scenario(
            "network",
            f"{kind} at connect",
            "outage",
            world.proxied,
            setup=lambda k=kind, kw=kw: p.add_fault(k, **kw),
        )  # fmt: skip
        for kind, kw in [
            ("down", {}),
            ("reset", {}),
            ("blackhole", {}),
            ("freeze", {}),
            ("limit_data", {"bytes": 8, "direction": "downstream"}),
            ("limit_data", {"bytes": 8, "direction": "upstream"}),
        ]
    ]
    under = [
        ("reset", {}),
        ("down", {}),
        ("terminate", {}),
        ("blackhole", {"duration": 1.0}),
        ("limit_data", {"bytes": 1, "direction": "downstream"}),
    ]
    for kind, kw in under:
        scenarios.append(
            Scenario(
                "network",
                f"{kind} under a statement",
                "outage",
                world.proxied,
                steps=["SELECT 1", SLEEP],
                strike=lambda k=kind, kw=kw: p.add_fault(k, **kw),
                sleepers_on=world.dsn(),
            )
        )
    # Faults that only slow a session down must raise nothing.
    for kind, kw in [
        ("latency", {"ms": 20, "jitter_ms": 5}),
        ("bandwidth", {"kbps": 200}),
        ("slow_close", {"delay_ms": 50}),
    ]:
        scenarios.append(
            Scenario(
                "network",
                f"{kind}",
                "benign",
                world.proxied,
                setup=lambda k=kind, kw=kw: p.add_fault(k, **kw),
            )  # fmt: skip
        )
    _assert_judged(world, world.play(scenarios), "network")


# ----------------------------------------------------------------- logins


def test_login_rejections(world: World) -> None:
    p = world.proxy
    scenarios = []
    for preset, error in sorted(LOGIN_PRESETS.items()):
        truth = "permanent" if error.code.startswith("28") else "outage"
        scenarios.append(
            Scenario(
                "login",
                f"reject_login {preset}",
                truth,
                world.proxied,
                setup=lambda pr=preset: p.add_fault("reject_login", preset=pr),
            )  # fmt: skip
        )
    for code, message, truth in [
        ("57P01", "terminating connection due to administrator command", "outage"),
        ("3D000", 'database "corpus" does not exist', "permanent"),
        ("28000", 'role "postgres" does not exist', "permanent"),
        ("08P01", "unsupported startup parameter: options", "permanent"),
        ("53300", 'too many connections for role "postgres"', "outage"),
    ]:
        scenarios.append(
            Scenario(
                "login",
                f"reject_login {code}",
                truth,
                world.proxied,
                setup=lambda c=code, m=message: p.add_fault(
                    "reject_login", severity="FATAL", sqlstate=c, message=m
                ),
            )
        )
    _assert_judged(world, world.play(scenarios), "login")


# -------------------------------------------------------------------- cuts


def test_cut_at_each_message(world: World) -> None:
    """cut_after each statement of a transaction: forwarded or dropped, reply awaited or not."""
    p = world.proxy
    steps = ["SELECT 1", "UPDATE corpus_t SET v = v + 1 WHERE id = 1", "COMMIT"]
    scenarios = []
    for pattern in ("^BEGIN", "^SELECT 1", "^UPDATE", "^COMMIT"):
        for forward, wait_reply in ((True, True), (True, False), (False, False)):
            scenarios.append(
                Scenario(
                    "cut",
                    f"cut_after {pattern} forward={forward} wait_reply={wait_reply}",
                    "outage",
                    world.proxied,
                    steps=steps,
                    during_commit=pattern == "^COMMIT",
                    setup=lambda pt=pattern, f=forward, w=wait_reply: p.add_fault(
                        "cut_after", pattern=pt, forward=f, wait_reply=w
                    ),
                )
            )
    _assert_judged(world, world.play(scenarios), "cut")


# ------------------------------------------------------------------ server


def test_server_stopped_killed_restarted(world: World) -> None:
    server = world.server
    scenarios = []
    for how, act in [
        ("stopped (fast) under a statement", lambda: server.stop("fast")),
        ("stopped (immediate) under a statement", lambda: server.stop("immediate")),
        ("killed under a statement", server.kill),
    ]:
        scenarios.append(
            Scenario(
                "server",
                how,
                "outage",
                world.direct,
                steps=["SELECT 1", SLEEP],
                strike=act,
                sleepers_on=world.dsn(),
                teardown=server.start,
            )  # fmt: skip
        )
    scenarios.append(
        Scenario(
            "server",
            "connect while stopped",
            "outage",
            world.direct,
            setup=server.stop,
            teardown=server.start,
        )  # fmt: skip
    )
    # An idle session whose server restarted, then used (one driver at a time:
    # each restarts the server between its two statements).
    for driver in DRIVERS:
        scenarios.append(
            Scenario(
                "server",
                "restarted under an idle session",
                "outage",
                world.direct,
                steps=["SELECT 1", server.restart, "SELECT 2"],
                drivers=[driver],
            )  # fmt: skip
        )
    _assert_judged(world, world.play(scenarios), "server")


# ------------------------------------------------------ timeouts and limits


def test_server_timeouts_conflicts_and_limits(world: World) -> None:
    t = world.direct
    dsn = world.dsn()

    def with_setting(name: str, value: str) -> Target:
        return Target(t.host, t.port, dbname="corpus", libpq={"options": f"-c {name}={value}"},
                      asyncpg={"server_settings": {name: value}})  # fmt: skip

    lock_holder = Holder(dsn, ["LOCK TABLE corpus_t IN ACCESS EXCLUSIVE MODE"])
    limited_holder = Holder(world.dsn(user="limited"), ["SELECT 1"])

    def bump_row_1() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("UPDATE corpus_t SET v = v + 1 WHERE id = 1")

    scenarios = [
        Scenario(
            "timeouts",
            "statement_timeout",
            "timeout",
            t,
            steps=["SET statement_timeout = 100", "SELECT pg_sleep(2)"],
        ),  # fmt: skip
        Scenario(
            "timeouts",
            "lock_timeout",
            "conflict",
            t,
            steps=["SET lock_timeout = 100", "LOCK TABLE corpus_t"],
            setup=lock_holder.start,
            teardown=lock_holder.stop,
        ),  # fmt: skip
        Scenario(
            "timeouts",
            "idle_in_transaction_session_timeout",
            "not_permanent",
            with_setting("idle_in_transaction_session_timeout", "150"),
            steps=["SELECT 1", _pause(0.8), "SELECT 2"],
        ),  # fmt: skip
        Scenario(
            "timeouts",
            "transaction_timeout",
            "not_permanent",
            with_setting("transaction_timeout", "300"),
            steps=["SELECT 1", "SELECT pg_sleep(2)"],
        ),  # fmt: skip
        Scenario(
            "timeouts",
            "idle_session_timeout",
            "not_permanent",
            with_setting("idle_session_timeout", "150"),
            steps=["SELECT 1", "COMMIT", _pause(0.8), "SELECT 2"],
        ),  # fmt: skip
        Scenario(
            "timeouts",
            "serialization failure",
            "conflict",
            t,
            steps=[
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                "SELECT v FROM corpus_t WHERE id = 1",
                bump_row_1,
                "UPDATE corpus_t SET v = v + 1 WHERE id = 1",
            ],
        ),  # fmt: skip
        Scenario(
            "limits",
            "temp_file_limit",
            "permanent",
            t,
            steps=[
                "SET temp_file_limit = '64kB'",
                "SET work_mem = '64kB'",
                "SELECT * FROM generate_series(1, 200000) g ORDER BY g DESC",
            ],
        ),  # fmt: skip
        Scenario(
            "limits",
            "stack depth",
            "permanent",
            t,
            steps=["SET max_stack_depth = '100kB'", "SELECT corpus_deep(1)"],
        ),  # fmt: skip
        Scenario(
            "limits",
            "too many connections for the role",
            "outage",
            Target(t.host, t.port, user="limited", dbname="corpus"),
            setup=limited_holder.start,
            teardown=limited_holder.stop,
        ),  # fmt: skip
    ]
    world.play(scenarios)
    for group in ("timeouts", "limits"):
        _assert_judged(world, sum(1 for v in world.tally.verdicts if v.group == group), group)


def _pause(seconds: float) -> Callable[[], None]:
    return lambda: time.sleep(seconds)


# ------------------------------------------------------- auth, TLS and DSNs


def test_auth_tls_and_dsn_errors(world: World) -> None:
    host, port = world.server.host, world.server.port

    def target(**kw: Any) -> Target:
        return Target(host, port, dbname=kw.pop("dbname", "corpus"), **kw)

    scenarios = [
        Scenario(
            "auth",
            "wrong password",
            "permanent",
            target(user="pw_user", password="wrong-" + ROLE_PASSWORD),
        ),  # fmt: skip
        Scenario("auth", "no password", "permanent", target(user="pw_user")),
        Scenario("auth", "unknown role", "permanent", target(user="nobody_here")),
        Scenario("auth", "unknown database", "permanent", target(dbname="no_such_db")),
        Scenario(
            "auth",
            "require_auth=scram-sha-256 on trust",
            "permanent",
            target(libpq={"require_auth": "scram-sha-256"}),
            drivers=LIBPQ_DRIVERS,
        ),  # fmt: skip
        Scenario(
            "auth",
            "channel_binding=require without TLS",
            "permanent",
            target(libpq={"channel_binding": "require"}),
            drivers=LIBPQ_DRIVERS,
        ),  # fmt: skip
        Scenario(
            "tls",
            "sslmode=require, server without TLS",
            "permanent",
            target(libpq={"sslmode": "require"}, asyncpg={"ssl": "require"}),
        ),  # fmt: skip
        Scenario(
            "tls",
            "verify-full without a root certificate",
            "permanent",
            target(libpq={"sslmode": "verify-full", "sslrootcert": "/nonexistent/root.crt"}),
            drivers=LIBPQ_DRIVERS,
        ),  # fmt: skip
        Scenario(
            "dsn",
            "unknown connection option",
            "permanent",
            target(libpq={"no_such_option": "1"}),
            drivers=LIBPQ_DRIVERS,
        ),  # fmt: skip
        Scenario(
            "dsn",
            "sslmode=bogus",
            "permanent",
            target(libpq={"sslmode": "bogus"}),
            drivers=LIBPQ_DRIVERS,
        ),  # fmt: skip
        Scenario(
            "dsn",
            "DNS name that does not resolve",
            "outage",
            Target("no-such-host.invalid", port, dbname="corpus"),
        ),  # fmt: skip
        Scenario("dsn", "nothing listening", "outage", Target("127.0.0.1", free_port())),
    ]
    world.play(scenarios)
    for group in ("auth", "tls", "dsn"):
        _assert_judged(world, sum(1 for v in world.tally.verdicts if v.group == group), group)


# --------------------------------------------------------------- PgBouncer


def test_pgbouncer_errors(world: World) -> None:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    upstream = (world.server.host, world.server.port)
    with (
        self_signed_certificate("db.example.test") as (key, cert),
        PgBouncer(upstream, tls=(key, cert)) as plain,
        PgBouncer(upstream, settings={"max_client_conn": 1}) as full,
        PgBouncer(upstream, settings={"default_pool_size": 1, "query_wait_timeout": 1}) as busy,
        PgBouncer(("127.0.0.1", free_port())) as orphan,
    ):

        def via(b: PgBouncer, **kw: Any) -> Target:
            return Target("127.0.0.1", b.port, dbname="corpus", password=PASSWORD, **kw)

        hold_full = Holder(full.dsn("corpus"), ["SELECT 1"])
        hold_busy = Holder(busy.dsn("corpus"), ["SELECT 1"])  # in a transaction: keeps its server
        scenarios = [
            Scenario(
                "pgbouncer",
                "unsupported startup parameter",
                "permanent",
                via(
                    plain,
                    libpq={"options": "-c statement_timeout=1000"},
                    asyncpg={"server_settings": {"statement_timeout": "1000"}},
                ),
            ),  # fmt: skip
            Scenario(
                "pgbouncer",
                "wrong password",
                "permanent",
                Target("127.0.0.1", plain.port, dbname="corpus", password="wrong"),
            ),  # fmt: skip
            Scenario(
                "pgbouncer",
                "TLS host name mismatch",
                "permanent",
                via(
                    plain,
                    libpq={"sslmode": "verify-full", "sslrootcert": str(cert)},
                    asyncpg={"ssl": _verify_context(str(cert))},
                ),
            ),  # fmt: skip
            Scenario(
                "pgbouncer",
                "max_client_conn",
                "outage",
                via(full),
                setup=hold_full.start,
                teardown=hold_full.stop,
            ),  # fmt: skip
            Scenario(
                "pgbouncer",
                "query_wait_timeout",
                "outage",
                via(busy),
                setup=hold_busy.start,
                teardown=hold_busy.stop,
            ),  # fmt: skip
            Scenario("pgbouncer", "server behind it down", "outage", via(orphan)),
            Scenario(
                "pgbouncer",
                "server connection terminated",
                "outage",
                via(plain),
                steps=["SELECT 1", SLEEP],
                sleepers_on=world.dsn(),
                strike=lambda: _terminate_sleepers(world.dsn()),
            ),  # fmt: skip
        ]
        _assert_judged(world, world.play(scenarios), "pgbouncer")


def _verify_context(cafile: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=cafile)


def _terminate_sleepers(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
        )


# ------------------------------------------------------------------ remote


def test_remote_server_behind_fdw_and_dblink(world: World) -> None:
    remote = world.remote_proxy
    with psycopg.connect(world.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgres_fdw")
        conn.execute("CREATE EXTENSION IF NOT EXISTS dblink")
        conn.execute(
            "CREATE SERVER IF NOT EXISTS remote FOREIGN DATA WRAPPER postgres_fdw OPTIONS"
            f" (host '127.0.0.1', port '{remote.port}', dbname 'corpus', connect_timeout '2')"
        )
        conn.execute(
            "CREATE USER MAPPING IF NOT EXISTS FOR postgres SERVER remote OPTIONS (user 'postgres')"
        )
        conn.execute(
            "CREATE FOREIGN TABLE IF NOT EXISTS ft (id int, v int)"
            " SERVER remote OPTIONS (table_name 'corpus_t')"
        )
    conninfo = f"host=127.0.0.1 port={remote.port} dbname=corpus user=postgres connect_timeout=2"
    dblink = f"SELECT * FROM dblink('{conninfo}', 'SELECT 1') AS t(x int)"
    scenarios = []
    for kind in ("down", "reset", "blackhole"):
        for via, sql in (("postgres_fdw", "SELECT count(*) FROM ft"), ("dblink", dblink)):
            # postgres_fdw connects without a timeout of its own (libpq's
            # connect_timeout is not enforced on a non-blocking connect): on a
            # blackholed remote the statement waits until our statement_timeout,
            # which is this database answering.
            truth, steps = (
                ("timeout", ["SET statement_timeout = 500", sql])
                if kind == "blackhole"
                else ("remote", [sql])
            )
            scenarios.append(
                Scenario(
                    "remote",
                    f"{via}: remote {kind}",
                    truth,
                    world.direct,
                    steps=steps,
                    setup=lambda k=kind: remote.add_fault(k),
                    teardown=remote.clear,
                )  # fmt: skip
            )
    _assert_judged(world, world.play(scenarios), "remote")


# -------------------------------------------------------------- the count


def test_zz_the_whole_corpus(world: World) -> None:
    """Runs last in this module: the total, and nothing misjudged anywhere."""
    summary = world.tally.summary()
    print("\n" + summary)
    if os.environ.get("OUTLAST_FAULT_CORPUS"):
        print(f"corpus written to {os.environ['OUTLAST_FAULT_CORPUS']}")
    assert not world.tally.problems(), "\n".join(world.tally.problems())
