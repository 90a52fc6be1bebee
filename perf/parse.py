"""Parsers for the load tools' output; pure, so they are tested on captured text.

Before: stdout of `wrk --latency` or `iperf3 -J`. After: numbers in fixed units —
latency in microseconds, rates per second, bandwidth in Gbit/s.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def duration_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_US[m.group(2)]


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    requests: int
    errors: int
    p50_us: float | None
    p90_us: float | None
    p99_us: float | None


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rps or not total:
        raise ValueError(f"wrk printed no result:\n{out[-800:]}")
    pct = {m.group(1): duration_us(m.group(2))
           for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+\w+)\s*$", out, re.M)}
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return WrkResult(float(rps.group(1)), int(total.group(1)), errors,
                     pct.get("50"), pct.get("90"), pct.get("99"))


def parse_iperf3_gbps(out: str) -> float:
    data = json.loads(out)
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9
