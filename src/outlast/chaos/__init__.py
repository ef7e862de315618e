"""A fault-injecting PostgreSQL proxy with an admin HTTP API.

`Proxy` forwards TCP connections to a PostgreSQL server and injects network
faults (down, reset, blackhole, freeze, latency, bandwidth, slow_close,
limit_data) and protocol faults (reject_login with a real ``ErrorResponse``,
terminate with 57P01, cut_after a matching COMMIT, cut_at any message of a
session); ``Proxy.recording()`` lists a session's messages. `AdminServer` exposes
proxies over a Toxiproxy-like JSON API; `AdminClient` talks to it.

This package uses only the standard library (and uvloop when it is installed)
and nothing else of outlast.
"""

from __future__ import annotations

from outlast.chaos._address import parse_address
from outlast.chaos._admin import AdminServer
from outlast.chaos._client import AdminClient, AdminError
from outlast.chaos._faults import FAULT_KINDS, LOGIN_PRESETS, FaultSpec, LoginError
from outlast.chaos._proxy import Proxy

__all__ = [
    "FAULT_KINDS",
    "LOGIN_PRESETS",
    "AdminClient",
    "AdminError",
    "AdminServer",
    "FaultSpec",
    "LoginError",
    "Proxy",
    "parse_address",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("outlast.chaos._"):
        try:
            _obj.__module__ = "outlast.chaos"
        except (AttributeError, TypeError):  # pragma: no cover - constants
            pass
del _name, _obj
