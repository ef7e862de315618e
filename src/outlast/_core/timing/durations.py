"""The one rule for duration options: seconds as a number, or a `timedelta`.

Every option of outlast that is a duration (a timeout, a period, a backoff
step) goes through `seconds`, so every one of them accepts the same inputs and
rejects bad ones with the same `ConfigurationError` (a `ValueError`) naming
the option. Words: a *timeout* is a duration; a *deadline* is an instant on
the monotonic clock (a timeout added to "now").
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import overload

from outlast._core.faults.errors import ConfigurationError

__all__ = ["Seconds", "seconds"]

Seconds = float | timedelta
"""A duration option: seconds (int or float) or a `datetime.timedelta`."""


@overload
def seconds(value: Seconds, option: str, *, allow_zero: bool = ...) -> float: ...


@overload
def seconds(
    value: Seconds | None, option: str, *, allow_zero: bool = ..., allow_none: bool
) -> float | None: ...


def seconds(
    value: Seconds | None, option: str, *, allow_zero: bool = True, allow_none: bool = False
) -> float | None:
    """`value` as float seconds, or `ConfigurationError` naming `option`.

    Finite and not negative; zero only when `allow_zero`; None only when
    `allow_none` (then None is returned). Booleans are not durations.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        result = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ConfigurationError(
            f"{option} must be seconds (a number or a timedelta), not {value!r}"
        )
    if not math.isfinite(result) or result < 0 or (result == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{option} must be a finite number of seconds {bound}, not {value!r}"
        )
    return result
