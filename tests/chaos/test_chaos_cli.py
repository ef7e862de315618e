"""``outlast proxy`` as a subprocess: bad input, serving, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from chaos_kit import EchoServer, roundtrip

from outlast.chaos import AdminClient, AdminError

CLI = [sys.executable, "-m", "outlast", "proxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def printed_token(line: str) -> str:
    """The token from ``admin API token: <token>  (...)``."""
    assert line.startswith("admin API token: "), line
    return line.removeprefix("admin API token: ").split()[0]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def echo() -> object:
    with EchoServer() as server:
        yield server


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--listen", "nonsense"], "--listen must look like HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "between 0 and 65535"),
        (["--upstream", "127.0.0.1:"], "--upstream must look like HOST:PORT"),
        (["--admin", "10.1.2.3:8474", "--no-check-upstream"], "not loopback"),
    ],
)
def test_bad_addresses_are_one_line_errors(args: list[str], needle: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_upstream_is_a_one_line_error() -> None:
    result = run_cli(
        "--listen", f"127.0.0.1:{free_port()}", "--upstream", f"127.0.0.1:{free_port()}"
    )
    assert result.returncode != 0
    assert "unreachable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_a_one_line_error(echo: EchoServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{echo.port}")
    assert result.returncode != 0
    assert "cannot listen" in result.stderr and "in use" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# How a CI runner or a non-interactive shell starts a background job: SIGINT (and
# SIGQUIT) ignored. Python then never installs its KeyboardInterrupt handler, so a
# command that relied on it kept running after SIGINT.
SIGINT_IGNORED = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, '-m', 'outlast', *sys.argv[1:]])"
)


@pytest.mark.parametrize("inherited", ["default", "sigint-ignored"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serves_and_stops_cleanly(echo: EchoServer, sig: signal.Signals, inherited: str) -> None:
    listen, admin = free_port(), free_port()
    launcher = CLI if inherited == "default" else [sys.executable, "-c", SIGINT_IGNORED, "proxy"]
    # `with` closes the pipes and reaps the process even when an assertion fails,
    # so a failure here never leaks into the next test as unclosed files.
    with subprocess.Popen(
        [
            *launcher,
            "--listen",
            f"127.0.0.1:{listen}",
            "--upstream",
            f"127.0.0.1:{echo.port}",
            "--admin",
            f"127.0.0.1:{admin}",
            "--name",
            "db",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            assert f"127.0.0.1:{listen}" in banner, proc.stderr.read() if proc.stderr else ""
            token = printed_token(proc.stdout.readline())
            assert roundtrip(listen) == b"hello"
            with pytest.raises(AdminError) as refused:  # no token, no service
                AdminClient(f"http://127.0.0.1:{admin}", token="").proxies()
            assert refused.value.status == 401
            client = AdminClient(f"http://127.0.0.1:{admin}", token=token)
            assert client.proxies()["db"]["total_connections"] == 1
            with client.fault("db", "down"):
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", listen), timeout=5)
            assert roundtrip(listen) == b"hello"
            time.sleep(0.2)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, err
    assert "stopped" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_chosen_token_is_used_and_never_printed(echo: EchoServer, how: str) -> None:
    listen, admin = free_port(), free_port()
    chosen = "my-chosen-admin-token-0123456789"
    args = ["--admin-token", chosen] if how == "flag" else []
    env = {**os.environ, "OUTLAST_PROXY_TOKEN": chosen} if how == "environment" else None
    with subprocess.Popen(
        [*CLI, "--listen", f"127.0.0.1:{listen}", "--upstream", f"127.0.0.1:{echo.port}",
         "--admin", f"127.0.0.1:{admin}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            assert "as given" in proc.stdout.readline()
            url = f"http://127.0.0.1:{admin}"
            assert set(AdminClient(url, token=chosen).proxies()) == {"postgres"}
            with pytest.raises(AdminError) as refused:
                AdminClient(url, token=chosen + "x").proxies()
            assert refused.value.status == 401
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, err
    assert chosen not in out + err


def test_a_bad_token_is_a_one_line_error() -> None:
    result = run_cli("--admin-token", "has spaces in it", "--no-check-upstream")
    assert result.returncode == 2
    assert "admin token" in result.stderr and "has spaces" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
