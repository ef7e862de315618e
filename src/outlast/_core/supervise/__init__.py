"""Supervised background work: threads and asyncio tasks that survive crashes.

`record` is one task's record and context; `base` the I/O-free decisions both
supervisors share; `threads` and `tasks` are the thread and asyncio shells;
`loop` builds periodic loops that ride out database outages. Public through
``outlast.supervise`` and ``outlast.loop``.
"""
