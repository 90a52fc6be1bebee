"""Decide whether a CSR from a node may be signed: a pure function, no I/O.

Before: the CSR bytes exactly as received, the node name taken from the caller's verified mTLS
certificate (control/ca/grpc_service.py), and a `NodeWorkloads` view of the cluster. After: an
`Issue` (the validated identity and the public key to certify) or a `Deny` with the gRPC status
name, a short `reason` (the label of the refusal counter) and a message for the log and the caller.

Rules, in order (the first that fails decides):
  unparsable CSR, bad self-signature                     → INVALID_ARGUMENT
  a CA requested (basicConstraints cA=true, keyCertSign)  → INVALID_ARGUMENT
  no URI SAN, several URI SANs, any other SAN type        → INVALID_ARGUMENT
  not a SPIFFE ID / another trust domain / not ns+sa form → INVALID_ARGUMENT
  key not ECDSA P-256                                     → INVALID_ARGUMENT
  (ns, sa) has no pod on the requesting node              → PERMISSION_DENIED
Only the public key and the validated SPIFFE ID are used to issue; nothing else in the CSR is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from control.ca import spiffe_id
from control.ca.node_workloads import NodeWorkloads


class Code(enum.Enum):
    """gRPC status names (the service maps them to `grpc.StatusCode`)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    PERMISSION_DENIED = "PERMISSION_DENIED"


@dataclass(frozen=True)
class Issue:
    identity: spiffe_id.WorkloadId
    public_key: ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Deny:
    code: Code
    reason: str
    message: str


REASONS = (
    "unparsable", "bad_signature", "ca_requested", "no_uri_san", "several_uri_sans",
    "other_san", "not_spiffe_id", "other_trust_domain", "not_workload_identity",
    "unsupported_key", "not_on_node",
)


def _invalid(reason: str, message: str) -> Deny:
    return Deny(Code.INVALID_ARGUMENT, reason, message)


def check_csr(csr_pem: bytes | str, *, node: str, workloads: NodeWorkloads,
              trust_domain: str) -> Issue | Deny:
    """See the module docstring. Never raises for bad input; returns a Deny instead."""
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode("utf-8", "replace")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        extensions = list(csr.extensions)  # malformed or duplicate extensions raise here
        signature_ok = csr.is_signature_valid
    except (ValueError, TypeError) as exc:
        return _invalid("unparsable", f"the CSR is not a PEM PKCS#10 request ({exc})")
    except Exception as exc:  # noqa: BLE001 - unsupported algorithms etc.: refuse, never crash
        return _invalid("unparsable", f"the CSR cannot be read ({type(exc).__name__})")
    if not signature_ok:
        return _invalid("bad_signature", "the CSR's signature does not verify with its own key")

    uris: list[str] = []
    other_sans: list[str] = []
    for ext in extensions:
        value = ext.value
        if isinstance(value, x509.BasicConstraints) and value.ca:
            return _invalid("ca_requested", "the CSR asks for a CA certificate (cA=true)")
        if isinstance(value, x509.KeyUsage) and (value.key_cert_sign or value.crl_sign):
            return _invalid("ca_requested", "the CSR asks for keyCertSign/cRLSign key usage")
        if isinstance(value, x509.SubjectAlternativeName):
            for name in value:
                if isinstance(name, x509.UniformResourceIdentifier):
                    uris.append(name.value)
                else:
                    other_sans.append(type(name).__name__)
    if not uris:
        return _invalid("no_uri_san", "the CSR has no URI SAN; put the SPIFFE ID in one URI SAN")
    if len(uris) > 1:
        return _invalid("several_uri_sans",
                        f"the CSR has {len(uris)} URI SANs; an X.509-SVID has exactly one")
    if other_sans:
        return _invalid("other_san",
                        f"the CSR has SANs other than the SPIFFE ID ({', '.join(other_sans)})")

    uri = uris[0]
    try:
        td, _ = spiffe_id.split(uri)
    except spiffe_id.SpiffeIdError as exc:
        return _invalid("not_spiffe_id", str(exc))
    if td != trust_domain:
        return _invalid("other_trust_domain",
                        f"{uri} is in trust domain {td!r}; this CA serves {trust_domain!r}")
    try:
        identity = spiffe_id.parse_workload(uri)
    except spiffe_id.SpiffeIdError as exc:
        return _invalid("not_workload_identity", str(exc))

    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return _invalid("unsupported_key", "the CSR's key must be ECDSA P-256")

    if (identity.namespace, identity.service_account) not in workloads.service_accounts_on(node):
        return Deny(Code.PERMISSION_DENIED, "not_on_node",
                    f"node {node!r} has no pod running as {identity.principal}")
    return Issue(identity=identity, public_key=key)
