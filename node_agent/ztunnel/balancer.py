"""Picks one ready endpoint of a Service for a new connection: round robin per Service.

Before: a decision (outbound for an enrolled pod's connection, inbound for an unenrolled pod's
connection captured at a Service VIP) found a Service for the original destination.
After: `ready_endpoints` lists its endpoints that are ready workloads, each with the workload
port the service port maps to, and `RoundRobin.pick` chooses one. Round robin keeps a counter
per Service (the only state); `pick` is deterministic given that counter, so tests can predict it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from control.snapshot import Service, Workload
from node_agent.ztunnel.wire import Address

T = TypeVar("T")


class RoundRobin:
    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, key: str, candidates: Sequence[T]) -> T:
        if not candidates:
            raise ValueError("no candidates")
        i = self._next.get(key, 0)
        self._next[key] = (i + 1) % (1 << 30)
        return candidates[i % len(candidates)]


def target_port(service: Service, port: int, endpoint_ports: Mapping[int, int]) -> int | None:
    """The workload port a service port leads to: the endpoint's resolved mapping, else a
    numeric targetPort; None when a named targetPort is not resolved for that endpoint."""
    if port in endpoint_ports:
        return endpoint_ports[port]
    for sp in service.ports:
        if sp.port == port and isinstance(sp.target_port, int):
            return sp.target_port
    return None


def ready_endpoints(service: Service, port: int, workloads: Mapping[str, Workload]
                    ) -> list[tuple[Workload, Address]]:
    """The Service's endpoints that are ready workloads, with the address to connect to for
    service port `port`."""
    ready = []
    for ep in service.endpoints:
        w = workloads.get(ep.workload)
        tp = target_port(service, port, ep.ports)
        if w is not None and w.ready and tp is not None:
            ready.append((w, Address(ep.ip or w.ip, tp)))
    return ready
