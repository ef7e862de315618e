"""One process of the migration races.

``python migrate_worker.py <mode> '<json options>'``: imports everything it
needs, prints ``ready``, waits for a line on stdin (the parent releases every
worker at once), runs, and prints one JSON line with what happened:

- ``outlast``: ``outlast.migrate.run`` with an Alembic, Django or SQL runner;
- ``naive-alembic``: Alembic's ``command.upgrade`` with no lock (what most
  services run in their entrypoint);
- ``naive-django``: Django's ``call_command("migrate")`` with no lock.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback


def _runner(options: dict) -> object:
    import outlast.migrate as migrate

    kind = options["runner"]
    if kind == "alembic":
        return migrate.AlembicRunner(options["config"])
    if kind == "django":
        return migrate.DjangoRunner()
    return migrate.SqlRunner(options["sql"])


def _error(exc: BaseException) -> dict:
    import outlast

    fault = outlast.classify(exc)
    return {
        "error": type(exc).__name__,
        "reason": fault.reason if fault else getattr(exc, "reason", None),
        "sqlstate": fault.sqlstate if fault else None,
        "message": str(exc).splitlines()[0][:300] if str(exc) else "",
    }


def main() -> int:
    mode = sys.argv[1]
    options = json.loads(sys.argv[2])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(message)s", stream=sys.stderr
    )
    result: dict = {"pid": os.getpid(), "mode": mode}
    if mode == "outlast":
        import outlast.migrate as migrate

        runner = _runner(options)
    elif mode == "naive-alembic":
        from alembic import command
        from alembic.config import Config

        config = Config(options["config"])
        config.set_main_option("sqlalchemy.url", options["url"])
    elif mode == "naive-django":
        import django
        from django.core.management import call_command

        django.setup()
    print("ready", flush=True)
    sys.stdin.readline()
    result["started_at"] = time.time()
    try:
        if mode == "outlast":
            status = migrate.run(
                runner,
                dsn=options["dsn"],
                role=options.get("role"),
                wait=options.get("wait", 60),
                lock=options.get("lock"),
                lease=options.get("lease", 10.0),
            )
            result.update(
                outcome=status.outcome,
                applied=list(status.applied),
                leader=status.leader,
                applied_at=status.applied_at,
            )
        elif mode == "naive-alembic":
            command.upgrade(config, "heads")
            result["outcome"] = "done"
        elif mode == "naive-django":
            call_command("migrate", interactive=False, verbosity=0)
            result["outcome"] = "done"
    except Exception as exc:
        result.update(_error(exc))
        traceback.print_exc()
    result["ready_at"] = time.time()
    print(json.dumps(result), flush=True)
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
