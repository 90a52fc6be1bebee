"""SPIFFE IDs: the one place that builds and parses them.

Before: a namespace and service account (from a pod), a node name (from `local up` or Kubernetes),
or a URI SAN read from a certificate or CSR. After: a validated, frozen `WorkloadId` or `NodeId`
whose `uri` is what goes into an X.509-SVID and whose `principal` is the Istio-style
`<td>/ns/<ns>/sa/<sa>` that authorization policies name.

Shapes (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md):
  workload  spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
  node      spiffe://<trust-domain>/lacewing/node/<node-name>   (node agents, local mode)
The trust domain is `cluster.local` unless configured. Parsing is strict: the scheme and trust
domain are lower case, no port, user info, query or fragment, no empty, `.` or `..` segments, and
segment characters limited to the SPIFFE set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"
SCHEME = "spiffe://"

# The control plane's own identity, and the DNS name its serving certificate also carries so
# that gRPC clients can check it (the CA never takes DNS names from a CSR).
CONTROL_NAMESPACE = "lacewing-system"
CONTROL_SERVICE_ACCOUNT = "lacewing-control"
CONTROL_DNS_NAMES = (
    "lacewing-control.lacewing-system.svc",
    "lacewing-control.lacewing-system.svc.cluster.local",
)

_TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9._-]{1,255}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._-]+$")


class SpiffeIdError(ValueError):
    """A string is not a SPIFFE ID of a shape Lacewing issues; the message says why."""


def validate_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN_RE.match(trust_domain or ""):
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} is not valid: use lower-case letters, digits, '.', '-', '_'"
        )
    return trust_domain


def _check_segment(value: str, what: str) -> str:
    if not value or value in (".", "..") or not _SEGMENT_RE.match(value):
        raise SpiffeIdError(f"{what} {value!r} is not a valid SPIFFE ID path segment")
    return value


@dataclass(frozen=True, order=True)
class WorkloadId:
    """`spiffe://<td>/ns/<namespace>/sa/<service_account>`: the identity of a workload."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _check_segment(self.namespace, "namespace")
        _check_segment(self.service_account, "service account")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The Istio principal form, e.g. `cluster.local/ns/default/sa/api-gateway`."""
        return self.uri[len(SCHEME):]

    def __str__(self) -> str:
        return self.uri


@dataclass(frozen=True, order=True)
class NodeId:
    """`spiffe://<td>/lacewing/node/<node>`: the identity of a node agent (local mode)."""

    trust_domain: str
    node: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _check_segment(self.node, "node name")

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/lacewing/node/{self.node}"

    def __str__(self) -> str:
        return self.uri


def workload_id(namespace: str, service_account: str, *,
                trust_domain: str = DEFAULT_TRUST_DOMAIN) -> WorkloadId:
    return WorkloadId(trust_domain, namespace, service_account)


def node_id(node: str, *, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> NodeId:
    return NodeId(trust_domain, node)


def split(uri: str) -> tuple[str, list[str]]:
    """Split any SPIFFE ID into (trust domain, path segments), validating it strictly."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise SpiffeIdError(f"{uri!r} is not a SPIFFE ID: it must start with {SCHEME!r}")
    rest = uri[len(SCHEME):]
    if any(c in rest for c in "?#"):
        raise SpiffeIdError(f"{uri!r} is not a SPIFFE ID: no query or fragment allowed")
    trust_domain, _, path = rest.partition("/")
    if "@" in trust_domain or ":" in trust_domain:
        raise SpiffeIdError(f"{uri!r} is not a SPIFFE ID: no user info or port allowed")
    validate_trust_domain(trust_domain)
    if not path:
        return trust_domain, []
    segments = path.split("/")
    for seg in segments:
        _check_segment(seg, "path segment")
    return trust_domain, segments


def parse(uri: str) -> WorkloadId | NodeId:
    """Parse a SPIFFE ID of one of the shapes Lacewing issues; SpiffeIdError otherwise."""
    trust_domain, segs = split(uri)
    if len(segs) == 4 and segs[0] == "ns" and segs[2] == "sa":
        return WorkloadId(trust_domain, segs[1], segs[3])
    if len(segs) == 3 and segs[0] == "lacewing" and segs[1] == "node":
        return NodeId(trust_domain, segs[2])
    raise SpiffeIdError(
        f"{uri!r} is not a Lacewing identity: expected spiffe://<td>/ns/<ns>/sa/<sa> "
        "or spiffe://<td>/lacewing/node/<node>"
    )


def parse_workload(uri: str) -> WorkloadId:
    parsed = parse(uri)
    if not isinstance(parsed, WorkloadId):
        raise SpiffeIdError(f"{uri!r} is a node identity, not a workload identity")
    return parsed


def parse_node(uri: str) -> NodeId:
    parsed = parse(uri)
    if not isinstance(parsed, NodeId):
        raise SpiffeIdError(f"{uri!r} is a workload identity, not a node identity")
    return parsed
