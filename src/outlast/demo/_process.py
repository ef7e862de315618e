"""The reference service (`outlast.demo._service`) as a uvicorn process on loopback.

One way to start it, shared by `outlast demo`, the fleet drill and the tests:
settings travel in the environment (``DATABASE_URL``, ``OUTLAST_MODE``,
``OUTLAST_BUDGET``), output goes to a log file, the port is a free one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["start_service"]


def start_service(
    log: Path, db_url: str, *, mode: str, budget: float, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the service in `mode` (``outlast``, ``seeds`` or ``plain``); (process, base URL).

    It answers once its ``/health/live`` does; stopping it is the caller's.
    """
    from outlast.testing import free_port

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "OUTLAST_ENABLED": "1" if mode == "outlast" else "0",
        "OUTLAST_MODE": mode,
        "OUTLAST_BUDGET": str(budget),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "outlast.demo._service:app_from_env",
        "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd or log.parent
        )
    return proc, f"http://127.0.0.1:{port}"
