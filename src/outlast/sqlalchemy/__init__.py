"""Hardened SQLAlchemy engines: ``pip install 'outlast[sqlalchemy]'``.

::

    import outlast
    from outlast.sqlalchemy import create_engine

    db = outlast.Guard("main")
    engine = create_engine("postgresql+psycopg://app@db/app", guard=db)

See the README section "Hardened connections" for every default and why.
"""

from __future__ import annotations

from outlast._core.connections.hardening import PRESETS, Hardening, preset_for
from outlast.sqlalchemy import _transaction  # noqa: F401  (registers Guard.transaction adapters)
from outlast.sqlalchemy._engine import create_async_engine, create_engine, hardening_of, install

__all__ = [
    "PRESETS",
    "Hardening",
    "create_async_engine",
    "create_engine",
    "hardening_of",
    "install",
    "preset_for",
]
