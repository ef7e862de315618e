"""The drill drives a real-looking API without a wrapper: credentials (a header, a login
request, a token command), a write body template, the service's own ids, per-id
reads, read-back through every page; and a scenario whose fault never fired is
"not exercised", never a pass. Secrets never reach the results or the report."""

from __future__ import annotations

import json
import socket
import sys
import threading
from typing import Any

import pytest
from api_kit import PASSWORD, TOKEN, FakeApi
from drill_kit import FakeInjector, FakeService

from outlast.drill import DrillConfig, DrillResult, Route, builtin, render_html, run_drill
from outlast.drill._api import Auth, JsonTemplate

BODY = JsonTemplate.parse('{"name": "drill {id}", "email": "{id}@example.com"}')
LOGIN = Auth(
    login_path="/api/auth/token/",
    login_body={"username": "drill", "password": PASSWORD},
    header="Authorization: Token {token}",
)


def _config(url: str, **kw: Any) -> DrillConfig:
    base: dict[str, Any] = {
        "url": url,
        "scenarios": [builtin("down", duration=1.5, budget=1.0)],
        "read": Route("GET", "/api/leads/"),
        "write": Route("POST", "/api/leads/"),
        "ping": Route("GET", "/api/ping/"),
        "live": None,  # --live none
        "health_path": None,
        "readback": Route("GET", "/api/leads/"),
        "budget": 1.0,
        "margin": 0.5,
        "warmup": 0.6,
        "settle": 0.4,
        "max_recovery": 3.0,
        "interval": 0.05,
        "workers": {"read": 1, "write": 2},
        "label": "api",
        "auth": LOGIN,
        "write_body": BODY,
        "write_id": "id",
        "read_one": Route("GET", "/api/leads/{id}/"),
        "start_timeout": 60.0,
    }
    base.update(kw)
    return DrillConfig(**base)


def _no_secret(result: DrillResult) -> None:
    text = json.dumps(result.as_dict()) + render_html([result])
    assert TOKEN not in text and PASSWORD not in text


@pytest.mark.parametrize("pagination", ["drf", "link"])
async def test_a_login_protected_paginated_api_is_drilled_and_read_back(pagination: str) -> None:
    with FakeApi(pagination=pagination) as api:
        result = await run_drill(_config(api.url), FakeInjector(api))
        requests = list(api.requests)
    assert result.error is None, result.error
    assert result.passed, [c.as_dict() for s in result.scenarios for c in s.checks]
    ledger = result.ledger
    assert ledger is not None and ledger.acknowledged > 2 * 7  # more than two pages
    assert not ledger.lost and not ledger.duplicated and ledger.unchecked == 0
    # Every write came from the template, and the whole list was read, page by page.
    assert all(r["email"].endswith("@example.com") for r in api.rows.values())
    pages = {p for m, p, _ in requests if m == "GET" and "page=" in p}
    assert len(pages) >= 2
    # Each acknowledged write was also read by the service's own id.
    assert sum(1 for m, p, _ in requests if m == "GET" and p.rstrip("/")[-1].isdigit()) >= 7
    # --live none: the drill started at once (the no-database route answered),
    # not after a start-up timeout: the first requests were the probe and the login.
    assert requests[0][1] == "/api/ping/" and requests[1][1] == "/api/auth/token/"
    _no_secret(result)


async def test_per_id_reads_catch_an_acknowledged_write_that_was_never_stored() -> None:
    with FakeApi("lose") as api:  # while down, writes are answered 201 and dropped
        result = await run_drill(_config(api.url, readback=None), FakeInjector(api))
    ledger = result.ledger
    assert ledger is not None and ledger.lost, ledger
    assert not result.passed
    # Without a listing, writes that never got an answer cannot be looked up: said so.
    assert ledger.unchecked == ledger.attempted - ledger.acknowledged


async def test_without_credentials_the_drill_stops_at_once_and_says_why() -> None:
    with FakeApi() as api:
        result = await run_drill(_config(api.url, auth=None), FakeInjector(api))
    assert result.error is not None and "401" in result.error
    assert "--header" in result.error and not result.scenarios


async def test_a_wrong_password_is_reported_without_the_password() -> None:
    wrong = Auth(
        login_path="/api/auth/token/",
        login_body={"username": "drill", "password": "not-" + PASSWORD},
        header="Authorization: Token {token}",
    )
    with FakeApi() as api:
        result = await run_drill(_config(api.url, auth=wrong), FakeInjector(api))
    assert result.error == "could not get credentials: the login request answered 400"
    _no_secret(result)


def test_token_command_and_header_flags_end_to_end(tmp_path: Any, capsys: Any) -> None:
    from outlast.cli import main

    report = tmp_path / "report.html"
    with FakeApi() as api:
        # A token command whose output is the token (as `manage.py drilluser` prints it).
        command = f"{sys.executable} -c \"print('noise'); print({TOKEN!r})\""
        argv = [
            "drill", "--url", api.url, "--scenarios", "terminate", "--budget", "1",
            "--duration", "1", "--warmup", "0.5", "--max-recovery", "3",
            "--read", "GET /api/leads/", "--write", "POST /api/leads/", "--live", "none",
            "--health", "none", "--readback", "GET /api/leads/",
            "--token-command", command, "--auth-header", "Authorization: Token {token}",
            "--header", "X-Drill: yes",
            "--write-body", '{"name": "n {id}", "email": "{id}@example.com"}',
            "--json", "--report", str(report),
        ]  # fmt: skip
        code = main(argv)  # no proxy: `terminate` needs one, so the scenario errors
        out = capsys.readouterr()
    results = json.loads(out.out)
    assert code == 1 and results["error"] is None
    assert "needs a chaos proxy" in results["scenarios"][0]["error"]
    assert results["writes"]["acknowledged"] > 0  # the token opened the data routes
    for text in (out.out, out.err, report.read_text()):
        assert TOKEN not in text


def test_bad_options_are_refused_without_echoing_secrets(capsys: Any) -> None:
    from outlast.cli import main

    base = ["drill", "--url", "http://127.0.0.1:9"]
    cases = [
        (["--login", "POST /login", "--login-body", "{password: hunter2"], "not JSON"),
        (["--header", "Authorization Bearer hunter2"], "'Name: value'"),
        (["--write-body", '{"name": "hunter2"}'], "{id}"),
        (["--write-id", "id"], "--read-one"),
        (["--read-one", "GET /api/leads/"], "{id}"),
        (["--token-command", "x", "--login", "POST /l"], "not both"),
    ]
    for extra, expected in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert expected in err and "hunter2" not in err, (extra, err)


def test_the_drill_command_says_which_extra_it_needs_when_httpx_is_missing() -> None:
    import subprocess

    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from outlast.cli import main\n"
        "assert main(['wait', '--help']) == 0\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr  # the other commands do not need the extra
    code = (
        "import sys; sys.modules['httpx'] = None\n"
        "from outlast.cli import main\n"
        "sys.exit(main(['drill', '--url', 'http://127.0.0.1:9']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "pip install 'outlast[drill]'" in done.stderr


def test_a_scenario_whose_fault_never_fired_is_not_exercised(capsys: Any) -> None:
    """commit_lost through a real chaos proxy in front of a service that never sends
    COMMIT through it: the proxy counts no cut, so the scenario is no pass."""
    from outlast.chaos import AdminServer, Proxy
    from outlast.cli import main

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(64)
    stop = threading.Event()

    def accept() -> None:
        upstream.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = upstream.accept()
                conn.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        with Proxy(listen=("127.0.0.1", 0), upstream=upstream.getsockname(), name="pg") as proxy:
            admin = AdminServer([proxy], listen=("127.0.0.1", 0)).start()
            try:
                with FakeService("good", probe=("127.0.0.1", proxy.port)) as svc:
                    argv = [
                        "drill", "--url", svc.url, "--proxy-admin", admin.url,
                        "--ping", "GET /api/ping", "--scenarios", "commit_lost,reset",
                        "--budget", "2", "--duration", "1.5", "--warmup", "0.5",
                        "--max-recovery", "4", "--json",
                    ]  # fmt: skip
                    code = main(argv)
            finally:
                admin.stop()
    finally:
        stop.set()
        t.join(timeout=5)
        upstream.close()
    results = json.loads(capsys.readouterr().out)
    lost, reset = results["scenarios"]
    assert code == 1 and results["passed"] is False
    assert lost["verdict"] == "not exercised" and lost["exercised"] is False
    assert lost["fault_windows"][0]["hits"] == 0
    assert results["not_exercised"] == ["commit_lost"]
    # The same proxy did act in `reset` (every probe connection was reset): a pass.
    assert reset["exercised"] is True and reset["fault_windows"][0]["hits"] > 0
    assert reset["verdict"] == "pass", reset
