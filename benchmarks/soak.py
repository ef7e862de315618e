"""Soak an example service: ``outlast drill --soak`` against it under its real server.

Starts a private PostgreSQL, a chaos proxy with its admin API, and one example
service (``examples/fastapi_app.py`` under uvicorn, ``examples/flask_app.py``
under gunicorn gthread, ``examples/django_app`` under gunicorn sync workers),
then runs the soak exactly as a user would (``outlast drill --soak ... --pid
<server> --dsn <direct connection>``) and stops everything::

    .venv/bin/python benchmarks/soak.py fastapi --soak 10m \\
        --report soak-fastapi.html --svg docs/soak-fastapi.svg --json soak-fastapi.json

Exit code: the soak's (0 pass, 1 fail). The README's soak figures come from
this script with ``--soak 10m`` for each of the three services. Options it
does not know go to ``outlast drill`` (``--scenarios down,flapping``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TOKEN = "soak-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(service: str, port: int, workers: int) -> list[str]:
    py = sys.executable
    if service == "fastapi":
        return [
            py, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(EXAMPLES),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    if service == "flask":
        return [
            py, "-m", "gunicorn", "-k", "gthread", "--threads", "16", "-w", "1",
            "-b", f"127.0.0.1:{port}", "--chdir", str(EXAMPLES), "--timeout", "120",
            "--graceful-timeout", "2", "--log-level", "warning", "flask_app:app",
        ]  # fmt: skip
    return [
        py, "-m", "gunicorn", "-k", "sync", "-w", str(workers), "-b", f"127.0.0.1:{port}",
        "--chdir", str(EXAMPLES), "--timeout", "120", "--graceful-timeout", "2",
        "--log-level", "warning", "django_app.wsgi:application",
    ]  # fmt: skip


def service_env(database_url: str, budget: float, *, enabled: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        OUTLAST_ENABLED="1" if enabled else "0",
        OUTLAST_BUDGET=str(budget),
        API_TOKEN=TOKEN,
        DJANGO_SETTINGS_MODULE="django_app.settings",
        PYTHONPATH=str(EXAMPLES) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONUNBUFFERED="1",
        OUTLAST_LOG_LEVEL="WARNING",
    )
    return env


def django_token(direct_url: str, budget: float) -> str:
    """Migrate the example's database and make the drill's user; its API token."""
    env = service_env(direct_url, budget)
    for args in (["migrate", "-v", "0"], ["drilluser", "drill"]):
        done = subprocess.run(
            [sys.executable, "-m", "django", *args], cwd=EXAMPLES, env=env,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"django {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def wait_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"the service did not start:\n{log.read_text(errors='replace')[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("service", choices=("fastapi", "flask", "django"))
    p.add_argument("--soak", default="10m", help="how long (90s, 10m, ...)")
    p.add_argument("--budget", type=float, default=5.0, help="the drill's request budget")
    p.add_argument("--workers", type=int, default=8, help="gunicorn sync workers (Django)")
    p.add_argument("--report", help="HTML report")
    p.add_argument("--svg", help="the resource plots as SVG")
    p.add_argument("--json", help="every sample and verdict as JSON")
    p.add_argument(
        "--plain",
        action="store_true",
        help="run the example without outlast (OUTLAST_ENABLED=0), to tell outlast's memory "
        "from the framework's; the soak then fails its drill checks, as it should",
    )
    args, drill_args = p.parse_known_args(argv)  # the rest goes to `outlast drill`

    from outlast.chaos import AdminServer, Proxy
    from outlast.cli import main as outlast
    from outlast.testing import EmbeddedPostgres

    workdir = Path(tempfile.mkdtemp(prefix="outlast-soak-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)  # last: the server's files, the log
        pg = EmbeddedPostgres(workdir / "pg")
        stack.callback(pg.cleanup)
        stack.callback(pg.stop)
        pg.start()
        pg.create_database("leads")
        proxy = Proxy(listen=("127.0.0.1", 0), upstream=("127.0.0.1", pg.port), name="soak")
        proxy.start()
        stack.callback(proxy.stop)
        admin = AdminServer([proxy], listen=("127.0.0.1", 0)).start()
        stack.callback(admin.stop)

        budget = max(0.5, args.budget - 0.5)  # the service answers inside the drill's budget
        through_proxy = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/leads"
        direct = pg.url("leads", driver=None)
        token = django_token(direct, budget) if args.service == "django" else TOKEN
        port = free_port()
        log = workdir / "service.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                server_command(args.service, port, args.workers),
                env=service_env(through_proxy, budget, enabled=not args.plain),
                stdout=fh, stderr=subprocess.STDOUT, cwd=str(EXAMPLES),
            )  # fmt: skip

        def stop() -> None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(20)

        stack.callback(stop)
        url = f"http://127.0.0.1:{port}"
        slash = "/" if args.service == "django" else ""
        wait_up(f"{url}/api/ping{slash}", proc, log)
        drill = [
            "drill", "--url", url, "--proxy-admin", admin.url, "--proxy-token", admin.token,
            "--soak", args.soak, "--pid", str(proc.pid), "--dsn", direct,
            "--budget", str(args.budget), "--ping", f"GET /api/ping{slash}",
            "--label", f"{args.service} example" + (" without outlast" if args.plain else ""),
        ]  # fmt: skip
        if args.service == "django":
            drill += [
                "--read", "GET /api/leads/", "--write", "POST /api/leads/",
                "--readback", "GET /api/leads/", "--health", "/health/ready",
                "--write-body", '{"name": "soak {id}", "email": "{id}@example.com"}',
                "--header", f"Authorization: Token {token}",
            ]  # fmt: skip
        else:
            drill += ["--header", f"Authorization: Bearer {token}"]
        for flag, value in (
            ("--report", args.report),
            ("--soak-svg", args.svg),
            ("--soak-json", args.json),
        ):
            if value:
                drill += [flag, value]
        if args.plain:
            drill += ["--health", "none"]  # the plain example has no health routes
        drill += [a for a in drill_args if a != "--"]
        code = outlast(drill)
        tail = log.read_text(errors="replace")
        if "Traceback" in tail:
            print(f"tracebacks in the service's log:\n{tail[-4000:]}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
