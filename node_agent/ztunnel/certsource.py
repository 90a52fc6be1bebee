"""A `CertSource` that signs with a CA in this process — for the standalone tunnel (perf,
debugging) where no control plane runs. The node agent uses its `CertificateManager` instead.

Before: a CA directory (Istio's `cacerts` layout, as `lacewing local up` writes). After:
`await get(identity)` gives a `WorkloadCertificate`, reissued after half its life.
"""

from __future__ import annotations

import time

from control.ca.authority import CertificateAuthority
from control.ca.spiffe_id import parse_workload
from node_agent.certs.manager import WorkloadCertificate


class CaCertificates:
    def __init__(self, ca: CertificateAuthority, *, ttl: int | None = None) -> None:
        self._ca = ca
        self._ttl = ttl
        self._have: dict[str, WorkloadCertificate] = {}

    async def get(self, identity: str) -> WorkloadCertificate:
        cert = self._have.get(str(identity))
        now = time.time()
        if cert is None or now > (cert.not_before + cert.not_after) / 2:
            wid = parse_workload(str(identity))
            key, chain = self._ca.issue_with_new_key(wid, ttl=self._ttl)
            cert = WorkloadCertificate(identity=wid, cert_chain_pem=b"".join(chain.cert_chain),
                                       key_pem=key, trust_bundle_pem=b"".join(chain.trust_bundle),
                                       serial=chain.serial, not_before=chain.not_before,
                                       not_after=chain.not_after)
            self._have[str(identity)] = cert
        return cert
