"""Parsing and printing of the values that the sample app's flags and headers carry.

Before: text from a command-line flag or a request header (`200ms`, `0.3`, `30%`, `100/s`,
`503`). After: a plain number in base units (seconds, a fraction, requests per second, a
status code), or a `ValueError` whose message says what was wrong and what is accepted.

Durations follow the Go / Istio form (`1.5s`, `200ms`, `1m30s`, `0`): a unit is required for
every non-zero value, so `200` is refused rather than guessed at as seconds or milliseconds.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Longest unit first so that "ms" is not read as "m" followed by garbage.
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|h|m|s)")
_DURATION_HINT = "use a number with a unit: ns, us, ms, s, m or h (e.g. 200ms, 1.5s, 1m30s)"


def parse_duration(text: str) -> float:
    """Seconds in `text` (`200ms`, `1.5s`, `1m30s`, `0`); ValueError if it is not a duration."""
    s = text.strip()
    if s in ("0", "0.0"):
        return 0.0
    if not s:
        raise ValueError(f"empty duration; {_DURATION_HINT}")
    total = 0.0
    pos = 0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{text!r} is not a duration; {_DURATION_HINT}")
    if not math.isfinite(total):
        raise ValueError(f"{text!r} is too large a duration")
    return total


def format_duration(seconds: float) -> str:
    """A readable form of `seconds` that `parse_duration` reads back (`200ms`, `1.5s`, `0`)."""
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {seconds}")
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            number = f"{seconds / scale:.6f}".rstrip("0").rstrip(".")
            return f"{number}{unit}"
    return "0"


def parse_fraction(text: str) -> float:
    """A fraction in [0, 1] from `0.3` or `30%`; ValueError otherwise."""
    s = text.strip()
    try:
        value = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise ValueError(f"{text!r} is not a fraction; use a number from 0 to 1 (e.g. 0.3) or a percentage (30%)") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{text!r} is outside 0..1; use a number from 0 to 1 (e.g. 0.3) or a percentage (30%)")
    return value


def parse_status(text: str) -> int:
    """An HTTP status code a server may answer with (200-599); ValueError otherwise."""
    s = text.strip()
    if not s.isdigit():
        raise ValueError(f"{text!r} is not an HTTP status code; use a number from 200 to 599 (e.g. 503)")
    code = int(s)
    if not (200 <= code <= 599):
        raise ValueError(f"{text!r} is not a final HTTP status; use a number from 200 to 599 (e.g. 503)")
    return code


def parse_rate(text: str) -> float:
    """Requests per second from `100`, `100/s`, `6000/m` or `10/h`; must be above zero."""
    s = text.strip()
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, _, unit = s.partition("/")
    unit = unit.strip() or "s"
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in per or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r} is not a rate; use requests per second above zero (e.g. 100 or 100/s, 6000/m)")
    return value / per[unit]


def parse_port(text: str) -> int:
    """A TCP port 0-65535 (0 lets the kernel choose); ValueError otherwise."""
    s = text.strip()
    if not s.isdigit() or int(s) > 65535:
        raise ValueError(f"{text!r} is not a TCP port; use 0 to 65535 (0 picks a free port)")
    return int(s)
