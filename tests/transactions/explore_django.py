"""The Django ORM style of the exploration, in a process of its own.

Django's settings are process-wide, so the Django runs happen here, not in
the pytest process: ``python explore_django.py HOST PORT DBNAME MODE [BUDGET]``
starts a chaos proxy in front of HOST:PORT, points Django at it, and prints
one JSON line:

- ``explore``: the exploration of `explore_kit` (``BUDGET``: ``all`` or a
  number), with its verdict;
- ``atomic``: the link dies inside one of fn's ``atomic()`` blocks (its
  SAVEPOINT never reaches the server), then an ordinary transaction runs on
  the same thread: the outcomes of both.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import explore_kit as kit  # noqa: E402 - after the path is set
from explore_styles import Django, Target, setup_django  # noqa: E402

from outlast.chaos import Proxy  # noqa: E402


def main(host: str, port: int, dbname: str, mode: str, budget: str) -> dict[str, object]:
    direct_dsn = f"host={host} port={port} dbname={dbname} user=postgres"
    with Proxy(upstream=(host, port)) as proxy:
        target = Target(proxy.host, proxy.port, dbname)
        style = Django()
        setup_django(style, target)
        explorer = kit.Explorer(style, proxy, target)
        if mode == "atomic":
            recording = explorer.record("savepoint")
            index, kind, _ = next(
                (i, k, m) for i, k, m in kit.window(recording) if k == "upstream Q SAVEPOINT"
            )
            point = kit.Point("upstream", index, False, "close", kind)
            broken = explorer.run("savepoint", point)
            after = explorer.run("insert", None)
            return {
                "fired": broken.fired,
                "broken": [broken.outcome, broken.error],
                "after": [after.outcome, after.error],
            }
        start = time.monotonic()
        listener = kit.listen(direct_dsn)
        try:
            explorer.explore(None if budget == "all" else int(budget))
            with kit.psycopg.connect(direct_dsn, autocommit=True) as direct:
                verdict = kit.check(style.name, explorer.runs, direct, listener)
        finally:
            listener.close()
        verdict.seconds = time.monotonic() - start
        return verdict.as_json()


if __name__ == "__main__":
    host, port, dbname, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    budget = sys.argv[5] if len(sys.argv) > 5 else "all"
    print(json.dumps(main(host, port, dbname, mode, budget), default=str))
