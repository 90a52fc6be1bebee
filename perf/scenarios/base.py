"""What every scenario provides."""

from __future__ import annotations

from dataclasses import dataclass

from perf.topology import PerfTopology


@dataclass(frozen=True)
class Target:
    http_url: str
    iperf_host: str
    iperf_port: int


class Scenario:
    name = ""
    description = ""

    def start(self, topo: PerfTopology) -> Target:
        raise NotImplementedError

    def pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass
