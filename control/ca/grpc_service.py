"""`lacewing.ca.v1.CertificateService` over gRPC (grpc.aio): the I/O around csr_check and the CA.

Before: a node agent connected with mTLS to the control plane's TLS port (15012) using its node
credential (control/ca/node_credentials.py); grpc verified the chain against the trust bundle.
After: the node name is read from the verified peer certificate (never from the request), the
CSR is judged by control/ca/csr_check.py, and either a chain is returned or the call ends with
PERMISSION_DENIED / INVALID_ARGUMENT — counted by reason and logged, nothing issued.

`ca` may be swapped at run time (`service.ca = new_ca`) for a root rotation.
"""

from __future__ import annotations

import logging

import grpc
from cryptography import x509

from control.api import ca_pb2, ca_pb2_grpc
from control.ca import spiffe_id
from control.ca.authority import CaConfigError, CertificateAuthority
from control.ca.certificates import uri_sans
from control.ca.csr_check import Code, Deny, check_csr
from control.ca.metrics import CaMetrics
from control.ca.node_workloads import NodeWorkloads

log = logging.getLogger("lacewing.ca")

_CODES = {
    Code.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Code.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
}


def peer_spiffe_id(context: grpc.aio.ServicerContext) -> str | None:
    """The URI SAN of the mTLS-verified peer certificate, or None without one."""
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    uris = uri_sans(cert)
    return uris[0] if len(uris) == 1 else None


class CertificateService(ca_pb2_grpc.CertificateServiceServicer):
    def __init__(self, *, ca: CertificateAuthority, workloads: NodeWorkloads,
                 metrics: CaMetrics) -> None:
        self.ca = ca
        self.workloads = workloads
        self.metrics = metrics

    def _caller_node(self, context) -> str | Deny:
        uri = peer_spiffe_id(context)
        try:
            ident = spiffe_id.parse(uri) if uri else None
        except spiffe_id.SpiffeIdError:
            ident = None
        if not isinstance(ident, spiffe_id.NodeId) or ident.trust_domain != self.ca.trust_domain:
            return Deny(Code.PERMISSION_DENIED, "not_a_node",
                        f"caller {uri or '(no SPIFFE ID)'} is not a node agent of trust domain "
                        f"{self.ca.trust_domain}")
        return ident.node

    async def _refuse(self, context, deny: Deny, *, peer: str) -> None:
        self.metrics.refused.labels(reason=deny.reason).inc()
        log.warning("refused certificate request from %s: %s (%s, %s)",
                    peer, deny.message, deny.code.value, deny.reason)
        await context.abort(_CODES[deny.code], deny.message)

    async def CreateCertificate(self, request, context):  # noqa: N802 - gRPC method name
        ca = self.ca
        node = self._caller_node(context)
        if isinstance(node, Deny):
            await self._refuse(context, node, peer=context.peer())
        decision = check_csr(request.csr, node=node, workloads=self.workloads,
                             trust_domain=ca.trust_domain)
        if isinstance(decision, Deny):
            await self._refuse(context, decision, peer=f"node {node}")
        try:
            issued = ca.sign(decision.public_key, decision.identity,
                             ttl=request.validity_duration)
        except (CaConfigError, ValueError) as exc:
            log.error("cannot sign %s for node %s: %s", decision.identity, node, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the CA cannot sign now: {exc}")
        self.metrics.issued.labels(kind="workload").inc()
        log.info("issued %s to node %s, serial %x, until %s", issued.spiffe_id, node,
                 issued.serial, issued.not_after)
        return ca_pb2.CreateCertificateResponse(
            cert_chain=[p.decode() for p in issued.cert_chain],
            trust_bundle=[p.decode() for p in issued.trust_bundle],
        )

    async def GetTrustBundle(self, request, context):  # noqa: N802 - gRPC method name
        ca = self.ca
        return ca_pb2.GetTrustBundleResponse(
            trust_domain=ca.trust_domain, roots=[p.decode() for p in ca.trust_bundle]
        )
