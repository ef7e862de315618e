"""Supervised background work: threads and asyncio tasks that survive crashes and outages.

::

    from outlast.supervise import Supervisor

    sup = Supervisor()
    sup.start("mailer", lambda ctx: send_mail_forever(ctx), heartbeat=30)
    sup.health()      # {"status": "pass", "tasks": {"mailer": {...}}}
    sup.stop(timeout=10)

`Supervisor` runs threads, `AsyncSupervisor` asyncio tasks; `outlast.loop`
builds periodic loops that back off on database faults (see `outlast.Loop`).
Standard library only: this module lives in the core.
"""

from __future__ import annotations

from outlast._core.supervise.loop import AsyncLoop, Loop, loop
from outlast._core.supervise.record import (
    DEFAULT_BACKOFF,
    OnFailure,
    RestartPolicy,
    TaskContext,
    TaskState,
    TaskStatus,
    beat,
    current,
)
from outlast._core.supervise.tasks import AsyncSupervisor, AsyncTaskContext
from outlast._core.supervise.threads import Supervisor, ThreadTaskContext

__all__ = [
    "DEFAULT_BACKOFF",
    "AsyncLoop",
    "AsyncSupervisor",
    "AsyncTaskContext",
    "Loop",
    "OnFailure",
    "RestartPolicy",
    "Supervisor",
    "TaskContext",
    "TaskState",
    "TaskStatus",
    "ThreadTaskContext",
    "beat",
    "current",
    "loop",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("outlast._"):
        _obj.__module__ = __name__
del _name, _obj
