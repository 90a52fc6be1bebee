"""The CA's Prometheus metrics, registered in a registry the caller passes (never the global one).

Before: control/ca/grpc_service.py issues or refuses. After: the control plane exposes
`lacewing_ca_certificates_issued_total{kind}` and `lacewing_ca_csr_refused_total{reason}` on its
metrics port (15014).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from control.ca.csr_check import REASONS


class CaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.issued = Counter(
            "lacewing_ca_certificates_issued", "X.509-SVIDs issued by the CA.",
            ["kind"], registry=registry,
        )
        self.refused = Counter(
            "lacewing_ca_csr_refused", "Certificate requests refused; nothing was issued.",
            ["reason"], registry=registry,
        )
        for reason in (*REASONS, "not_a_node"):
            self.refused.labels(reason=reason)
        self.issued.labels(kind="workload")
