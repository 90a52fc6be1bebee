"""A stand-in for the node agent process in the lifecycle tests.

    nsenter --net=/run/netns/<node> python tests/bpf/agent.py CLUSTER NODE ACTION [PODS_JSON]

Before: runs inside a node namespace, as the real agent will. After: did ACTION (install,
adopt, uninstall) with node_agent.datapath, synced PODS_JSON ([{ip, veth, enrolled}]) for
install/adopt, and printed one JSON line: the datapath status, the enrolled pods, and this
process's RSS and whether LLVM/libbcc is mapped in it. Then it exits, as agents do on restart.
"""

from __future__ import annotations

import json
import sys

from node_agent.datapath import Datapath, Pod


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def compiler_mapped() -> bool:
    with open("/proc/self/maps") as f:
        text = f.read()
    return "libLLVM" in text or "libbcc" in text or "libclang" in text


def main(argv: list[str]) -> int:
    cluster, node, action = argv[:3]
    pods = json.loads(argv[3]) if len(argv) > 3 else []
    with Datapath(cluster, node) as dp:
        if action == "uninstall":
            dp.uninstall()
            print(json.dumps({"ok": True}))
            return 0
        getattr(dp, action)()
        dp.sync([(Pod(ip=p["ip"], veth=p["veth"]), p["enrolled"]) for p in pods])
        dp.read_flows()
        dp.l4_totals()
        print(json.dumps({"status": dp.status(), "enrolled": sorted(dp.enrolled()),
                          "rss_kib": rss_kib(), "compiler_mapped": compiler_mapped()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
