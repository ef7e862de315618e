"""``outlast drill``: its options, and the command (terminal views in `_console`).

Importing this module needs only the standard library, so ``outlast --help``
works without the drill's extra; running the drill needs ``httpx`` and
``rich`` (``pip install 'outlast[drill]'``) and says so when they are missing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from outlast.drill._api import Auth, JsonTemplate, parse_header, read_text_arg
from outlast.drill._route import Route
from outlast.drill._scenarios import BUILTIN_SCENARIOS, Injector, load_scenarios, resolve
from outlast.drill._soak_cli import add_soak_arguments, run_soak_command

if TYPE_CHECKING:
    from outlast.drill._runner import DrillConfig

__all__ = [
    "DEFAULT_SCENARIOS",
    "EXTRA_HINT",
    "AdminInjector",
    "add_arguments",
    "config_from_args",
    "run_command",
]

DEFAULT_SCENARIOS = "down,blackhole,reset,freeze,terminate,neon_endpoint_disabled,flapping"
EXTRA_HINT = "pip install 'outlast[drill]'"


class AdminInjector:
    """The drill's fault injector over the chaos proxy's admin HTTP API."""

    def __init__(self, url: str, proxy: str | None = None, *, token: str | None = None) -> None:
        from outlast.chaos import AdminClient

        self.client = AdminClient(url, token=token)  # token None: $OUTLAST_PROXY_TOKEN
        if proxy is None:
            names = sorted(self.client.proxies())
            if len(names) != 1:
                raise ValueError(
                    f"the admin API at {url} has {len(names)} proxies "
                    f"({', '.join(names) or 'none'}); pick one with --proxy NAME"
                )
            proxy = names[0]
        self.proxy = proxy

    def add_fault(
        self, kind: str, duration: float | None = None, toxicity: float = 1.0, **params: Any
    ) -> str:
        return self.client.add_fault(self.proxy, kind, duration, toxicity, **params)

    def remove_fault(self, fault_id: str) -> None:
        self.client.remove_fault(self.proxy, fault_id)

    def clear(self) -> None:
        self.client.clear(self.proxy)

    def hits(self, fault_id: str) -> int | None:
        """What the fault acted on (connections, logins, messages), also once it ended."""
        value = self.client.fault_info(self.proxy, fault_id).get("hits")
        return value if isinstance(value, int) else None


def _route(text: str | None) -> Route | None:
    if text is None or text.strip().lower() in {"", "none", "off"}:
        return None
    return Route.parse(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="the service, e.g. http://127.0.0.1:8000")
    p.add_argument("--proxy-admin", help="chaos proxy admin API, e.g. http://127.0.0.1:8474")
    p.add_argument("--proxy", help="proxy name on the admin API (default: the only one)")
    p.add_argument(
        "--proxy-token",
        default=None,
        help="the admin API's token (default: $OUTLAST_PROXY_TOKEN)",
    )
    p.add_argument("--read", default="GET /api/leads", help="a read route ('none' to skip)")
    p.add_argument("--write", default="POST /api/leads", help="a write route ('none' to skip)")
    p.add_argument("--ping", default=None, help="a route that needs no database")
    p.add_argument("--live", default="GET /health/live", help="liveness route ('none' to skip)")
    p.add_argument("--health", default="/health/ready", help="health JSON path ('none' to skip)")
    p.add_argument(
        "--readback",
        default=None,
        help="route that lists writes afterwards, followed through its pages; {ids} is "
        "replaced by comma-separated ids (default: the read route with ?ids={ids}, or none "
        "with --read-one)",
    )
    api = p.add_argument_group("a real API: credentials, bodies, ids")
    api.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="sent with every request (repeatable), e.g. 'Authorization: Bearer ...'",
    )
    api.add_argument(
        "--token-command",
        metavar="CMD",
        help="run once before the drill; its output is the token (see --auth-header)",
    )
    api.add_argument(
        "--login",
        metavar="'METHOD /path'",
        help="a login request made once before the drill, e.g. 'POST /api/auth/token/'",
    )
    api.add_argument("--login-body", metavar="JSON", help="the login request's JSON body, or @file")
    api.add_argument(
        "--login-token",
        metavar="FIELD",
        help="where the login answer holds the token, a dotted path "
        "(default: token, access_token, access, key or id_token)",
    )
    api.add_argument(
        "--auth-header",
        default="Authorization: Bearer {token}",
        metavar="'NAME: ...{token}'",
        help="how the token is sent (default 'Authorization: Bearer {token}'; "
        "Django REST framework's TokenAuthentication: 'Authorization: Token {token}')",
    )
    api.add_argument(
        "--write-body",
        metavar="JSON",
        help="the JSON each write sends, or @file; {id} in its strings becomes the write's "
        'unique id (default: {"id": "{id}", "name": "drill {id}", "email": ...})',
    )
    api.add_argument(
        "--write-id",
        metavar="FIELD",
        help="where a write's answer holds the service's own id (dotted path, e.g. 'id'), "
        "for --read-one",
    )
    api.add_argument(
        "--read-one",
        metavar="'GET /path/{id}'",
        help="reads one write back by its id (the service's, with --write-id; else the drill's)",
    )
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma-separated (default: {DEFAULT_SCENARIOS}; with --soak every built-in but "
        f"restart); built-in: {', '.join(BUILTIN_SCENARIOS)}",
    )
    p.add_argument("--scenario-file", help="TOML file with [scenarios.<name>] tables")
    p.add_argument("--budget", type=float, default=5.0, help="seconds a request may take")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds each fault lasts (8; soak: 2)"
    )
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds of baseline per scenario (2; soak: 1.5)"
    )
    p.add_argument("--max-recovery", type=float, default=10.0, help="seconds to recover")
    p.add_argument("--restart-command", help="shell command that restarts the database")
    p.add_argument("--label", default=None, help="name of the service in the report")
    p.add_argument(
        "--metrics-path",
        default="/metrics",
        help="outlast's Prometheus metrics on the service, scraped around each scenario for "
        "the report's metrics view (default /metrics; 'none' to switch off)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--report", default=None, help="write an HTML report to this file")
    add_soak_arguments(p)


def _auth(args: argparse.Namespace) -> Auth | None:
    header = str(args.auth_header)
    if args.token_command:
        if args.login:
            raise ValueError("give --token-command or --login, not both")
        return Auth.from_command_line(args.token_command, header=header)
    if args.login:
        login = Route.parse(args.login)
        body: Any = None
        if args.login_body:
            try:
                body = json.loads(read_text_arg(args.login_body, "--login-body"))
            except json.JSONDecodeError:
                raise ValueError("--login-body is not JSON") from None  # never echo it
        return Auth(
            login_method=login.method,
            login_path=login.path,
            login_body=body,
            login_token=args.login_token,
            header=header,
        )
    if args.login_body or args.login_token:
        raise ValueError("--login-body and --login-token need --login")
    return None


def config_from_args(args: argparse.Namespace) -> DrillConfig:
    from outlast.drill._runner import DrillConfig

    custom = load_scenarios(args.scenario_file) if args.scenario_file else {}
    scenarios = DEFAULT_SCENARIOS if args.scenarios is None else args.scenarios
    duration = 8.0 if args.duration is None else args.duration
    warmup = 2.0 if args.warmup is None else args.warmup
    names = [n.strip() for n in str(scenarios).split(",") if n.strip()]
    if not names:
        raise ValueError("--scenarios names no scenario")
    for n in names:
        if n not in custom and n not in BUILTIN_SCENARIOS:
            raise ValueError(
                f"unknown scenario {n!r}; built-in: {', '.join(BUILTIN_SCENARIOS)}"
                + (f"; from {args.scenario_file}: {', '.join(custom)}" if custom else "")
            )
    if not 0 < args.budget <= 120 or not 0 < duration <= 600:
        raise ValueError("--budget must be in (0, 120] and --duration in (0, 600]")
    health = None if str(args.health).lower() in {"none", "off", ""} else args.health
    metrics = str(args.metrics_path)
    metrics_path = None if metrics.lower() in {"none", "off", ""} else metrics
    if metrics_path is not None and not metrics_path.startswith("/"):
        raise ValueError("--metrics-path must be a path starting with / (or none)")
    read_one = _route(args.read_one)
    if read_one is not None and "{id}" not in read_one.path:
        raise ValueError("--read-one needs {id} in its path, e.g. 'GET /api/leads/{id}/'")
    if args.write_id and read_one is None:
        raise ValueError("--write-id is for --read-one: give both")
    return DrillConfig(
        url=args.url,
        scenarios=resolve(names, duration=duration, budget=args.budget, custom=custom),
        read=_route(args.read),
        write=_route(args.write),
        ping=_route(args.ping),
        live=_route(args.live),
        health_path=health,
        metrics_path=metrics_path,
        readback=_route(args.readback),
        budget=args.budget,
        warmup=warmup,
        max_recovery=args.max_recovery,
        label=args.label or args.url,
        headers=dict(parse_header(h) for h in args.header),
        auth=_auth(args),
        write_body=JsonTemplate.parse(args.write_body) if args.write_body else None,
        write_id=args.write_id,
        read_one=read_one,
    )


def _injector(args: argparse.Namespace) -> AdminInjector | None:
    if not args.proxy_admin:
        return None
    return AdminInjector(args.proxy_admin, args.proxy, token=args.proxy_token)


def _restart_callback(command: str | None) -> Any:
    if not command:
        return None
    argv = shlex.split(command)

    def restart() -> None:
        subprocess.run(argv, check=True, timeout=300)

    return restart


def run_command(args: argparse.Namespace) -> int:
    if getattr(args, "soak", None):
        return run_soak_command(
            args,
            config_from_args=config_from_args,
            injector_from_args=_injector,
            restart=_restart_callback(args.restart_command),
        )
    try:
        import asyncio

        from rich.console import Console

        from outlast.drill._console import DETAILS_MIN_WIDTH, run_with_progress, scorecard_table
        from outlast.drill._report import write_report
        from outlast.drill._runner import DrillRun
    except ModuleNotFoundError as exc:
        print(
            f"outlast drill: {exc.name} is missing; the drill needs its extra: {EXTRA_HINT}",
            file=sys.stderr,
        )
        return 2
    console = Console(stderr=True)
    try:
        config = config_from_args(args)
        injector: Injector | None = (
            AdminInjector(args.proxy_admin, args.proxy, token=args.proxy_token)
            if args.proxy_admin
            else None
        )
    except (ValueError, OSError) as exc:
        console.print(f"[red]outlast drill: {exc}[/]", markup=True, highlight=False)
        return 2
    except Exception as exc:  # the admin API answered with an error
        console.print(f"[red]outlast drill: {exc}[/]", highlight=False)
        return 2
    run = DrillRun(config, injector, restart=_restart_callback(args.restart_command))
    [result] = asyncio.run(run_with_progress([run], console))
    if args.report:
        write_report(args.report, [result])
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        out = Console()
        out.print(scorecard_table(result, details=out.width >= DETAILS_MIN_WIDTH))
        if args.report:
            out.print(f"report: {args.report}")
    return 0 if result.passed else 1
