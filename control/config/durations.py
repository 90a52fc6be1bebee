"""Durations as Istio writes them: Go's `time.ParseDuration` syntax ("5s", "1.5h", "2h45m").

Before: a string from a resource. After: a `timedelta` (microsecond precision, as Python
keeps it), or `ValueError`. `format_duration` writes the canonical form back ("300s",
"0.25s"), which `parse_duration` reads to the same value, so a resource survives a
parse/serialize round trip.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

_UNITS_NS = {
    "ns": Decimal(1),
    "us": Decimal(1_000),
    "µs": Decimal(1_000),
    "μs": Decimal(1_000),
    "ms": Decimal(1_000_000),
    "s": Decimal(1_000_000_000),
    "m": Decimal(60_000_000_000),
    "h": Decimal(3_600_000_000_000),
}
_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
# Go's time.Duration is an int64 of nanoseconds: about 292 years.
_MAX_NS = Decimal(2**63 - 1)


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in `text`; raises ValueError the way Go's time.ParseDuration refuses."""
    if not isinstance(text, str) or not text:
        raise ValueError("empty duration")
    rest = text
    sign = 1
    if rest[0] in "+-":
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total = Decimal(0)
    pos = 0
    while pos < len(rest):
        match = _PART.match(rest, pos)
        if not match or match.group(1) in ("", "."):
            raise ValueError(f"invalid duration {text!r}: use a number and a unit (ms, s, m, h)")
        total += Decimal(match.group(1)) * _UNITS_NS[match.group(2)]
        if total > _MAX_NS:
            raise ValueError(f"duration {text!r} is out of range")
        pos = match.end()
    return sign * int(total)


def parse_duration(text: str) -> timedelta:
    return timedelta(microseconds=parse_duration_ns(text) / 1000)


def format_duration(value: timedelta) -> str:
    micros = value // timedelta(microseconds=1)
    seconds, frac = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    if frac == 0:
        return f"{sign}{seconds}s"
    return f"{sign}{seconds}.{frac:06d}".rstrip("0") + "s"
