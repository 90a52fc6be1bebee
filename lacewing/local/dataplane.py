"""Pure rendering of the plain (pre-mesh) data path: service rules and hosts files.

Before: the cluster's services with their cluster IPs and ready endpoints, and the pods of a
node. After: text — an nftables ruleset for one node namespace (kube-proxy's nftables shape:
DNAT from a cluster IP to a random ready endpoint) and a hosts file for one pod — that
`supervisor` loads. No I/O here, so the rules are tested as strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from node_agent.bpf.settings import Settings

TABLE = "lacewing_svc"
# Packets the capture programs assigned to a tunnel socket carry this mark: the tunnel balances
# Services itself, and a DNAT after bpf_sk_assign would break the flow (docs/datapath.md).
CAPTURE_MARK = Settings().mark
DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True)
class ServiceRule:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    endpoints: tuple[Endpoint, ...]


def _chain(rule: ServiceRule, index: int) -> str:
    return f"svc-{rule.namespace}-{rule.name}-{rule.port}-ep{index}"


def node_ruleset(rules: list[ServiceRule], local_pod_ips: list[str], gateway_ip: str) -> str:
    """The whole `lacewing_svc` table for one node, replacing any previous one atomically."""
    lines = [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    lines += [
        "  chain prerouting {",
        "    type nat hook prerouting priority -100; policy accept;",
        f"    meta mark {CAPTURE_MARK:#x} accept",
        "    jump services",
        "  }",
        "  chain output { type nat hook output priority -100; policy accept; jump services; }",
        "  chain postrouting {",
        "    type nat hook postrouting priority 100; policy accept;",
    ]
    # A pod that reaches itself through its own Service: make the reply come back through us.
    for ip in local_pod_ips:
        lines.append(f"    ct status dnat ip saddr {ip} ip daddr {ip} snat to {gateway_ip}")
    lines.append("  }")
    chains = []
    service_lines = []
    for rule in sorted(rules, key=lambda r: (r.cluster_ip, r.port)):
        if not rule.endpoints:
            continue  # no route for the service range: callers get "unreachable" at once
        names = []
        for i, ep in enumerate(rule.endpoints):
            name = _chain(rule, i)
            names.append(name)
            chains.append(f'  chain {name} {{ meta l4proto tcp dnat ip to {ep.ip}:{ep.port}; }}')
        if len(names) == 1:
            target = f"goto {names[0]}"
        else:
            vmap = ", ".join(f"{i} : goto {n}" for i, n in enumerate(names))
            target = f"numgen random mod {len(names)} vmap {{ {vmap} }}"
        service_lines.append(f"    ip daddr {rule.cluster_ip} tcp dport {rule.port} {target}")
    lines += chains
    lines.append("  chain services {")
    lines += service_lines
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class HostEntry:
    namespace: str
    name: str
    cluster_ip: str


def hosts_file(*, pod_name: str, pod_ip: str, pod_namespace: str, services: list[HostEntry]) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod_name}",
    ]
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        names = [f"{svc.name}.{svc.namespace}.svc.{DOMAIN}", f"{svc.name}.{svc.namespace}.svc",
                 f"{svc.name}.{svc.namespace}"]
        if svc.namespace == pod_namespace:
            names.append(svc.name)
        lines.append(f"{svc.cluster_ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


RESOLV_CONF = "# lacewing local mode: names come from /etc/hosts\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
