"""The control plane's metrics, in a registry of its own (served on :15014 with the CA's).

Before: the writer compiles, the xDS server pushes and receives ACK/NACKs. After, on /metrics:
- `lacewing_xds_connected_clients{role}` — node agents and waypoints connected now;
- `lacewing_xds_pushes_total{type}` and `lacewing_xds_pushed_bytes_total` — responses sent;
- `lacewing_xds_convergence_seconds` — from the moment a source reported a change to the ACK of
  the response that carried it, per client (the push latency an operator cares about);
- `lacewing_xds_rejects_total{type}` — resources NACKed by a client;
- `lacewing_config_compile_seconds` — one incremental (or full) compile;
- `lacewing_config_refused_resources` — mesh resources kept out because they do not validate;
- `lacewing_xds_resources{type}` and `lacewing_xds_catalog_version`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControlMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connected = Gauge("lacewing_xds_connected_clients",
                               "xDS clients connected now, by role.", ["role"], registry=registry)
        for role in ("node", "waypoint"):
            self.connected.labels(role=role)
        self.pushes = Counter("lacewing_xds_pushes", "xDS responses sent, by type.", ["type"],
                              registry=registry)
        self.pushed_bytes = Counter("lacewing_xds_pushed_bytes",
                                    "Bytes of xDS responses sent.", registry=registry)
        self.convergence = Histogram(
            "lacewing_xds_convergence_seconds",
            "From a source reporting a change to a client ACKing the push that carried it.",
            buckets=BUCKETS, registry=registry)
        self.rejects = Counter("lacewing_xds_rejects", "Resources rejected (NACKed) by clients.",
                               ["type"], registry=registry)
        self.compile_seconds = Histogram("lacewing_config_compile_seconds",
                                         "Time of one compile of changed objects.",
                                         buckets=BUCKETS, registry=registry)
        self.refused = Gauge("lacewing_config_refused_resources",
                             "Mesh resources kept out because they do not validate.",
                             registry=registry)
        self.resources = Gauge("lacewing_xds_resources", "Resources in the catalog, by type.",
                               ["type"], registry=registry)
        self.version = Gauge("lacewing_xds_catalog_version", "Version of the compiled catalog.",
                             registry=registry)

    def watch_catalog(self, counts: Callable[[], dict[str, int]],
                      version: Callable[[], int]) -> None:
        from control.xds.resources import SHORT_NAMES
        for type_url, short in SHORT_NAMES.items():
            self.resources.labels(type=short).set_function(
                lambda t=type_url: counts().get(t, 0))
        self.version.set_function(version)
