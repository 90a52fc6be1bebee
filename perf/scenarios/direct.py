"""direct: the client pod talks to the server pod with no mesh at all (the baseline)."""

from __future__ import annotations

from perf.scenarios.base import Scenario, Target
from perf.topology import PerfTopology


class Direct(Scenario):
    name = "direct"
    description = "no mesh: pod to pod across the underlay"

    def start(self, topo: PerfTopology) -> Target:
        ip = topo.server_ip
        return Target(f"http://{ip}:80/", ip, 5201)
