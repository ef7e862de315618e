"""Route marks, names and admission under the oldest FastAPI/Starlette the extra allows.

FastAPI changed how it keeps included routers: up to about 0.13x
``include_router`` copied each route into the app's router with its full
path; newer releases keep one entry per included router and serve its
routes through it. outlast finds the route a request goes to before the app
routes it (`outlast.starlette._routes`), so it must work with both. The
current versions run ``test_web_routes.py`` in the ordinary suite; this test
installs older pairs into a directory of their own (``pip install --target``,
no dependencies: pydantic, anyio and the rest stay the venv's) and runs the
same module in a subprocess that sees them first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The lower bound of the [fastapi] extra (fastapi>=0.110), and the last
# release line before FastAPI stopped copying included routes.
PAIRS = [
    ("fastapi==0.110.3", "starlette==0.36.3"),
    ("fastapi==0.115.14", "starlette==0.46.2"),
]


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=[p[0] for p in PAIRS])
def test_routes_under_older_fastapi_and_starlette(
    pair: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = tmp_path_factory.mktemp("versions")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *pair],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if install.returncode != 0:
        pytest.skip(f"pip could not install {pair}: {install.stderr.strip()[-300:]}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(HERE), env.get("PYTHONPATH", "")])
    versions = "import fastapi, starlette; print(fastapi.__version__, starlette.__version__)"
    probe = subprocess.run(
        [sys.executable, "-c", versions],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    wanted = tuple(p.split("==")[1] for p in pair)
    assert tuple(probe.stdout.split()) == wanted, probe.stdout
    run = subprocess.run(
        [
            sys.executable, "-m", "pytest", str(HERE / "test_web_routes.py"), "-q",
            "-p", "no:cacheprovider", "-p", "no:randomly",
            # Old FastAPI warns about the newer pydantic it runs with: not ours to fix.
            "-W", "ignore::DeprecationWarning", "-W", "ignore::PendingDeprecationWarning",
        ],
        capture_output=True, text=True, timeout=300, env=env, cwd=str(HERE.parents[1]),
        check=False,
    )  # fmt: skip
    print(f"\n{' '.join(pair)}: {run.stdout.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
