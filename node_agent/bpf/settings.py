"""Datapath settings: the one place ports, mark, routing table and map sizes are chosen.

Before: nothing. After: `node_agent.bpf.programs` turns a `Settings` into `-D` defines for the C
programs, and `node_agent.datapath` uses the same values for the fwmark rule, the local route
table and the tc filter priority, so kernel and user space cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

BPFFS = "/sys/fs/bpf"


@dataclass(frozen=True, kw_only=True)
class Settings:
    port_outbound: int = 15001
    port_inbound: int = 15006
    port_tunnel: int = 15008
    mark: int = 0x4C57
    route_table: int = 0x4C57          # holds `local 0.0.0.0/0 dev lo`
    rule_priority: int = 99            # before `main` (32766); after `local` (0)
    tc_priority: int = 0x4C57          # our filter's pref on clsact ingress
    max_pods: int = 4096
    max_excl: int = 16384
    max_flows: int = 65536
    max_capt: int = 65536
    max_tw: int = 16384                # captured SYNs meeting TIME_WAIT, awaiting sk_lookup

    def defines(self) -> dict[str, int]:
        return {
            "LW_PORT_OUTBOUND": self.port_outbound,
            "LW_PORT_INBOUND": self.port_inbound,
            "LW_PORT_TUNNEL": self.port_tunnel,
            "LW_MARK": self.mark,
            "LW_MAX_PODS": self.max_pods,
            "LW_MAX_EXCL": self.max_excl,
            "LW_MAX_FLOWS": self.max_flows,
            "LW_MAX_CAPT": self.max_capt,
            "LW_MAX_TW": self.max_tw,
        }


DEFAULT = Settings()


def pin_dir(cluster: str, node: str) -> str:
    """Where a node's programs and maps are pinned: /sys/fs/bpf/lw-<cluster>/<node>."""
    for what, value in (("cluster", cluster), ("node", node)):
        if not value or "/" in value or value.startswith(".") or "\x00" in value:
            raise ValueError(f"{what} name {value!r} cannot be part of a path")
    return f"{BPFFS}/lw-{cluster}/{node}"
