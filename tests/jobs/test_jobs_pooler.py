"""A worker behind a real PgBouncer in transaction mode: polling only, no prepared statements.

LISTEN through a transaction pooler is accepted but never delivers (the
session that listened is handed to someone else), so a DSN with the
``pgbouncer`` preset turns it off and the worker finds jobs by polling; every
statement of the queue is a single autocommit statement, so none depends on
session state.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_kit import Gauge, count, running, until

import outlast.jobs
from outlast.jobs import Jobs, NewJob
from outlast.testing import EmbeddedPostgres


def _pgbouncer() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(pg_server: EmbeddedPostgres) -> Iterator[tuple[str, int]]:
    binary = _pgbouncer()
    if binary is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer installs it as root)")
    folder = Path(tempfile.mkdtemp(prefix="outlast-pgbouncer-"))
    folder.chmod(0o777)  # PgBouncer refuses to run as root: it runs as nobody below
    port = _free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={pg_server.host} port={pg_server.port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
ignore_startup_parameters = extra_float_digits,options
logfile = {folder}/pgbouncer.log
"""
    )
    for f in folder.iterdir():
        f.chmod(0o666)
    user = "nobody" if os.geteuid() == 0 else None
    proc = subprocess.Popen(
        [binary, str(folder / "pgbouncer.ini")],
        user=user,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "pgbouncer did not start"
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_worker_behind_pgbouncer_in_transaction_mode(pgbouncer, pg_database) -> None:  # type: ignore[no-untyped-def]
    host, port = pgbouncer
    dsn = pg_database.dsn(host=host, port=port)
    jobs = Jobs(dsn, preset="pgbouncer", limits={"rec": 2}, poll_interval=0.2)
    assert jobs.listen is False  # decided from the preset: polling only
    gauge = Gauge()

    @jobs.handler("rec")
    async def rec(job: outlast.jobs.Job) -> None:
        gauge.enter(job)
        await asyncio.sleep(0.005)
        gauge.leave(job)

    jobs.enqueue_many([NewJob("rec", {}, key=n % 4) for n in range(120)])
    try:
        worker = jobs.worker(concurrency=8)
        with running(worker):
            until(lambda: len(gauge.done) == 120, what="120 jobs through pgbouncer")
            assert worker.health()["worker"]["listen"] == "off"
            jobs.enqueue("rec", {}, key=1)  # found by polling
            until(lambda: len(gauge.done) == 121)
    finally:
        jobs.close()
    assert gauge.peak == 2
    assert count(pg_database.dsn()) == 0
