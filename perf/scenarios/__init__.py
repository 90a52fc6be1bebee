"""Scenarios: ways for the client pod to reach the server pod, measured side by side.

A scenario has a `name`, `start(topology) -> Target` (what the load tools aim at), `pids()`
(the processes whose memory is reported) and `stop()`. Register new ones in `SCENARIOS`; the
first one, `direct`, is the baseline every ratio is taken against.
"""

from __future__ import annotations

from perf.scenarios.base import Scenario, Target
from perf.scenarios.direct import Direct
from perf.scenarios.haproxy_http import HaproxyHttp
from perf.scenarios.haproxy_mtls import HaproxyMtls
from perf.scenarios.lacewing_l4 import LacewingL4
from perf.scenarios.lacewing_l7 import LacewingL7
from perf.scenarios.lacewing_same_node import LacewingSameNode

SCENARIOS: dict[str, type[Scenario]] = {
    Direct.name: Direct,
    HaproxyMtls.name: HaproxyMtls,
    HaproxyHttp.name: HaproxyHttp,
    LacewingL7.name: LacewingL7,
    LacewingL4.name: LacewingL4,
    LacewingSameNode.name: LacewingSameNode,
}

__all__ = ["SCENARIOS", "Scenario", "Target"]
