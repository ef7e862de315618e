"""Log sequence numbers, byte sizes and durations: parsing and printing.

An `Lsn` is an ``int`` (a byte position in the WAL), so differences are byte
counts; it prints as PostgreSQL does (``16/B374D848``). Sizes accept what a
``postgresql.conf`` accepts (``"64MB"``, ``"1GB"``: powers of 1024) and the
IEC spellings (``"64MiB"``); durations accept seconds or a `timedelta`. Bad
input raises `outlast.ConfigurationError` naming the option.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import SupportsIndex

from outlast import ConfigurationError
from outlast._core.timing.durations import seconds as _seconds

__all__ = [
    "Lsn",
    "LsnLike",
    "duration",
    "format_bytes",
    "format_duration",
    "optional_duration",
    "parse_bytes",
]

_LSN_TEXT = re.compile(r"^\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*$")
_MAX_LSN = (1 << 64) - 1


class Lsn(int):
    """A WAL position: an ``int`` that prints as ``X/Y`` (as ``pg_lsn`` does)."""

    __slots__ = ()

    def __new__(cls, value: SupportsIndex | str = 0) -> Lsn:
        if isinstance(value, str):
            match = _LSN_TEXT.match(value)
            if match is None:
                raise ConfigurationError(
                    f"not an LSN: {value[:40]!r} (expected e.g. '16/B374D848')"
                )
            number = (int(match.group(1), 16) << 32) | int(match.group(2), 16)
        else:
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise ConfigurationError(f"not an LSN: {value!r}")
            number = int(value.__index__())
        if not 0 <= number <= _MAX_LSN:
            raise ConfigurationError(f"LSN out of range: {number}")
        return super().__new__(cls, number)

    @classmethod
    def parse(cls, value: LsnLike) -> Lsn:
        """An `Lsn` from ``"16/B374D848"``, an ``int`` or an `Lsn`."""
        return value if isinstance(value, Lsn) else cls(value)

    def __str__(self) -> str:
        return f"{int(self) >> 32:X}/{int(self) & 0xFFFFFFFF:X}"

    def __repr__(self) -> str:
        return f"Lsn('{self}')"


LsnLike = Lsn | int | str

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "gb": 1 << 30,
    "gib": 1 << 30,
    "tb": 1 << 40,
    "tib": 1 << 40,
}


def parse_bytes(value: int | str, what: str) -> int:
    """Bytes from ``1048576``, ``"64MB"`` or ``"1.5GiB"`` (units are powers of 1024)."""
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be a size in bytes, not {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigurationError(
                f"{what} must be a size such as 1048576, '64MB' or '1GiB', not {value[:40]!r}"
            )
        number = math.floor(float(match.group(1)) * _UNITS[unit])
    else:
        raise ConfigurationError(f"{what} must be a size in bytes, not {type(value).__name__}")
    if number <= 0:
        raise ConfigurationError(f"{what} must be > 0 bytes, not {value!r}")
    return number


def format_bytes(value: float | None) -> str:
    """``"70.0MiB"`` (``"-"`` for None)."""
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    size = abs(float(value))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{sign}{size:.0f}{unit}" if unit == "B" else f"{sign}{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(value: float | None) -> str:
    """``"45s"``, ``"12m"``, ``"3.5h"``, ``"2.0d"`` (``"-"`` for None)."""
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    if value < 172800:
        return f"{value / 3600:.1f}h"
    return f"{value / 86400:.1f}d"


def duration(value: float | datetime.timedelta, what: str) -> float:
    """Seconds (> 0) from a number or a `timedelta`."""
    return _seconds(value, what, allow_zero=False)


def optional_duration(value: float | datetime.timedelta | None, what: str) -> float | None:
    """Like `duration`, with None meaning "off"."""
    return None if value is None else duration(value, what)
