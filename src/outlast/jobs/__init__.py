"""Durable jobs on PostgreSQL with per-key slots that never stall, leak or double.

::

    import outlast.jobs

    jobs = outlast.jobs.Jobs("host=db dbname=app", limits={"recording": 3})

    @jobs.handler("recording")
    def download_recording(job: outlast.jobs.Job) -> None:
        ...  # job.payload, job.key (the business), job.slot (1..3)

    jobs.enqueue("recording", {"call_sid": sid}, key=business_id)          # or conn=your_conn
    jobs.worker(concurrency=8).run()        # or: outlast worker app.tasks:jobs --concurrency 8

Claims, completions and slot releases are single statements; a worker that
dies leaves only leases, taken over by the next claim after they expire. See
the README section "Durable jobs" for the guarantees and the figures.
Requires ``pip install 'outlast[psycopg]'``.
"""

from __future__ import annotations

from ._jobs import DEFAULT_RETRY_BACKOFF, Jobs
from ._model import Cancelled, Job, NewJob
from ._schema import SCHEMA_VERSION
from ._slots import Slot, Slots
from ._status import QueueStatus, astatus, status
from ._worker import Worker

__all__ = [
    "DEFAULT_RETRY_BACKOFF",
    "SCHEMA_VERSION",
    "Cancelled",
    "Job",
    "Jobs",
    "NewJob",
    "QueueStatus",
    "Slot",
    "Slots",
    "Worker",
    "astatus",
    "status",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("outlast.jobs._"):
        _obj.__module__ = __name__
del _name, _obj
