"""Run scenarios side by side: alternating order, repeated, every measurement in one topology.

Before: a started `PerfTopology`. After: a list of samples (scenario, repetition, metric
values), ready for `report`. Each repetition runs every scenario once, rotating the order so
no scenario always goes first (2 noisy cores: only ratios within a run mean anything).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from perf.parse import parse_iperf3_gbps, parse_wrk
from perf.scenarios import SCENARIOS, Scenario, Target
from perf.topology import PerfTopology

METRICS = {
    "p50_us": ("p50 latency, 1 conn (µs)", "lower"),
    "p99_us": ("p99 latency, 1 conn (µs)", "lower"),
    "rps_64": ("requests/s, 64 keep-alive conns", "higher"),
    "conn_rate": ("new connections/s", "higher"),
    "bulk_gbps": ("bulk Gbit/s (iperf3)", "higher"),
    "rss_mb": ("proxy RSS after load (MB)", "lower"),
}


@dataclass
class Sample:
    scenario: str
    repetition: int
    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


def _rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def measure(topo: PerfTopology, target: Target, scenario: Scenario, *, duration: int,
            repetition: int) -> Sample:
    d = str(duration)
    limit = duration + 30
    sample = Sample(scenario.name, repetition)
    lat = parse_wrk(topo.run_in_client(["wrk", "-t1", "-c1", f"-d{d}s", "--latency",
                                        target.http_url], timeout=limit))
    sample.values["p50_us"] = lat.p50_us or 0.0
    sample.values["p99_us"] = lat.p99_us or 0.0
    rps = parse_wrk(topo.run_in_client(["wrk", "-t1", "-c64", f"-d{d}s", target.http_url],
                                       timeout=limit))
    sample.values["rps_64"] = rps.requests_per_s
    conn = parse_wrk(topo.run_in_client(["wrk", "-t1", "-c16", f"-d{d}s", "-H",
                                         "Connection: close", target.http_url], timeout=limit))
    sample.values["conn_rate"] = conn.requests_per_s
    sample.values["bulk_gbps"] = parse_iperf3_gbps(topo.run_in_client(
        ["iperf3", "-c", target.iperf_host, "-p", str(target.iperf_port), "-t", d, "-J"],
        timeout=limit))
    if scenario.pids():
        sample.values["rss_mb"] = _rss_mb(scenario.pids())
    sample.errors = {"latency": lat.errors, "rps": rps.errors, "conn": conn.errors}
    return sample


def run(topo: PerfTopology, names: list[str], *, repeat: int, duration: int,
        progress=print) -> list[Sample]:
    samples = []
    for rep in range(repeat):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            scenario = SCENARIOS[name]()
            try:
                target = scenario.start(topo)
                sample = measure(topo, target, scenario, duration=duration, repetition=rep)
            finally:
                scenario.stop()
            samples.append(sample)
            progress(f"  rep {rep + 1}/{repeat} {name}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in sample.values.items()))
    return samples


def summarize(samples: list[Sample]) -> dict[str, dict[str, float]]:
    """Median of every metric per scenario."""
    by: dict[str, dict[str, list[float]]] = {}
    for s in samples:
        for k, v in s.values.items():
            by.setdefault(s.scenario, {}).setdefault(k, []).append(v)
    return {sc: {k: statistics.median(vs) for k, vs in m.items()} for sc, m in by.items()}


def as_json(samples: list[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
