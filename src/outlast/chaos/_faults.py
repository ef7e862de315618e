"""Fault kinds, their parameters and eager validation.

A `FaultSpec` is an immutable description (kind, parameters, toxicity,
duration). The proxy turns it into behaviour; this module only checks that
the request makes sense, so a typo fails at once with a `ValueError` that names
the bad option, from Python and from the admin API alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_KINDS",
    "LOGIN_PRESETS",
    "FaultSpec",
    "LoginError",
    "make_spec",
]

DIRECTIONS = ("both", "upstream", "downstream")


@dataclass(frozen=True)
class LoginError:
    """What `reject_login` answers to a StartupMessage."""

    severity: str
    code: str
    message: str
    detail: str | None = None
    hint: str | None = None


LOGIN_PRESETS: dict[str, LoginError] = {
    "starting_up": LoginError("FATAL", "57P03", "the database system is starting up"),
    "shutting_down": LoginError("FATAL", "57P03", "the database system is shutting down"),
    "too_many_connections": LoginError("FATAL", "53300", "sorry, too many clients already"),
    "neon_endpoint_disabled": LoginError(
        "ERROR", "XX000", "Control plane request failed: endpoint is disabled"
    ),
    "neon_endpoint_disabled_api": LoginError(
        "ERROR",
        "XX000",
        "The endpoint has been disabled. Enable it using Neon API and retry.",
    ),
    "auth_failed": LoginError(
        "FATAL", "28P01", 'password authentication failed for user "postgres"'
    ),
}

TERMINATE_ERROR = LoginError(
    "FATAL", "57P01", "terminating connection due to administrator command"
)

_SEVERITIES = ("ERROR", "FATAL", "PANIC")
_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")


def _number(name: str, value: object, *, minimum: float = 0.0, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, not {value!r}")
    if integer and value != int(value):
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return float(value)


def _text(name: str, value: object, *, limit: int = 1000) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    return value


def _direction(value: object) -> str:
    if value not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, not {value!r}")
    return str(value)


def _none(params: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _latency(params: Mapping[str, Any]) -> dict[str, Any]:
    if "ms" not in params:
        raise ValueError("latency needs ms (the added delay in milliseconds)")
    ms = _number("ms", params["ms"])
    jitter = _number("jitter_ms", params.get("jitter_ms", 0))
    return {"ms": ms, "jitter_ms": jitter, "direction": _direction(params.get("direction", "both"))}


def _bandwidth(params: Mapping[str, Any]) -> dict[str, Any]:
    if "kbps" not in params:
        raise ValueError("bandwidth needs kbps (kilobytes per second)")
    kbps = _number("kbps", params["kbps"], minimum=0.001)
    return {"kbps": kbps, "direction": _direction(params.get("direction", "both"))}


def _slow_close(params: Mapping[str, Any]) -> dict[str, Any]:
    if "delay_ms" not in params:
        raise ValueError("slow_close needs delay_ms")
    return {"delay_ms": _number("delay_ms", params["delay_ms"])}


def _limit_data(params: Mapping[str, Any]) -> dict[str, Any]:
    if "bytes" not in params:
        raise ValueError("limit_data needs bytes")
    limit = int(_number("bytes", params["bytes"], integer=True))
    return {"bytes": limit, "direction": _direction(params.get("direction", "downstream"))}


def _reject_login(params: Mapping[str, Any]) -> dict[str, Any]:
    preset = params.get("preset")
    if preset is None and "message" not in params:
        preset = "starting_up"
    if preset is not None:
        if preset not in LOGIN_PRESETS:
            raise ValueError(
                f"preset must be one of {', '.join(sorted(LOGIN_PRESETS))}, not {preset!r}"
            )
        base = LOGIN_PRESETS[str(preset)]
    else:
        base = LoginError("FATAL", "08006", "")
    severity = _text("severity", params.get("severity", base.severity), limit=20)
    if severity not in _SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(_SEVERITIES)}, not {severity!r}")
    code = _text("sqlstate", params.get("sqlstate", base.code), limit=5)
    if not _SQLSTATE.match(code):
        raise ValueError(f"sqlstate must be 5 characters of 0-9 or A-Z, not {code!r}")
    message = _text("message", params.get("message", base.message))
    if not message:
        raise ValueError("message must not be empty")
    detail = params.get("detail", base.detail)
    hint = params.get("hint", base.hint)
    return {
        "preset": preset,
        "severity": severity,
        "sqlstate": code,
        "message": message,
        "detail": None if detail is None else _text("detail", detail),
        "hint": None if hint is None else _text("hint", hint),
    }


def _cut_after(params: Mapping[str, Any]) -> dict[str, Any]:
    if "pattern" not in params:
        raise ValueError("cut_after needs pattern (a regular expression, e.g. '^\\s*COMMIT')")
    pattern = _text("pattern", params["pattern"])
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
    wait_reply = params.get("wait_reply", True)
    if not isinstance(wait_reply, bool):
        raise ValueError("wait_reply must be true or false")
    forward = params.get("forward", True)
    if not isinstance(forward, bool):
        raise ValueError("forward must be true or false")
    count = params.get("count")
    if count is not None:
        count = int(_number("count", count, minimum=1, integer=True))
    return {"pattern": pattern, "wait_reply": wait_reply, "forward": forward, "count": count}


CUT_HOWS = ("close", "reset", "terminate")


def _cut_at(params: Mapping[str, Any]) -> dict[str, Any]:
    direction = params.get("direction", "upstream")
    if direction not in ("upstream", "downstream"):
        raise ValueError(f"direction must be upstream or downstream, not {direction!r}")
    after = params.get("after")
    if after is not None:
        after = _text("after", after)
        try:
            re.compile(after, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"after is not a valid regular expression: {exc}") from None
    skip = int(_number("skip", params.get("skip", 0), integer=True))
    forward = params.get("forward", True)
    if not isinstance(forward, bool):
        raise ValueError("forward must be true or false")
    how = params.get("how", "close")
    if how not in CUT_HOWS:
        raise ValueError(f"how must be one of {', '.join(CUT_HOWS)}, not {how!r}")
    count = params.get("count")
    if count is not None:
        count = int(_number("count", count, minimum=1, integer=True))
    return {
        "direction": direction,
        "after": after,
        "skip": skip,
        "forward": forward,
        "how": how,
        "count": count,
    }


_Validator = Callable[[Mapping[str, Any]], dict[str, Any]]

# kind -> (validator, allowed parameter names)
_KINDS: dict[str, tuple[_Validator, frozenset[str]]] = {
    "down": (_none, frozenset()),
    "reset": (_none, frozenset()),
    "blackhole": (_none, frozenset()),
    "freeze": (_none, frozenset()),
    "latency": (_latency, frozenset({"ms", "jitter_ms", "direction"})),
    "bandwidth": (_bandwidth, frozenset({"kbps", "direction"})),
    "slow_close": (_slow_close, frozenset({"delay_ms"})),
    "limit_data": (_limit_data, frozenset({"bytes", "direction"})),
    "reject_login": (
        _reject_login,
        frozenset({"preset", "severity", "sqlstate", "message", "detail", "hint"}),
    ),
    "terminate": (_none, frozenset()),
    "cut_after": (_cut_after, frozenset({"pattern", "wait_reply", "forward", "count"})),
    "cut_at": (
        _cut_at,
        frozenset({"direction", "after", "skip", "forward", "how", "count"}),
    ),
}

FAULT_KINDS: tuple[str, ...] = tuple(_KINDS)


@dataclass(frozen=True)
class FaultSpec:
    """A validated fault: what to do, to what share of connections, for how long."""

    id: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    toxicity: float = 1.0
    duration: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.kind,
            "toxicity": self.toxicity,
            "duration": self.duration,
            "params": dict(self.params),
        }

    @property
    def login_error(self) -> LoginError:
        p = self.params
        return LoginError(p["severity"], p["sqlstate"], p["message"], p["detail"], p["hint"])


def make_spec(
    fault_id: str,
    kind: object,
    *,
    duration: object = None,
    toxicity: object = 1.0,
    params: Mapping[str, Any] | None = None,
) -> FaultSpec:
    """Validate a fault request; raise `ValueError` naming the first bad option."""
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"unknown fault {kind!r}; known faults: {', '.join(FAULT_KINDS)}")
    params = dict(params or {})
    validator, allowed = _KINDS[kind]
    unknown = sorted(set(params) - allowed)
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"{kind} does not take {unknown[0]!r} (accepted: {accepted})")
    dur: float | None = None
    if duration is not None:
        dur = _number("duration", duration)
    tox = _number("toxicity", toxicity)
    if tox > 1.0:
        raise ValueError(f"toxicity must be between 0 and 1, not {toxicity!r}")
    return FaultSpec(fault_id, kind, validator(params), tox, dur)
