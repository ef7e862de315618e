"""``outlast demo``: the outage drill on a reference service, built three ways.

`outlast.demo._service` is the reference FastAPI service (``create_app``,
``app_from_env``); `outlast.demo._demo.run_demo` runs the whole demo.
Needs the ``demo`` extra.
"""

from __future__ import annotations

__all__: list[str] = []
