"""Per-node client credentials for local mode: how a node agent proves which node it is.

Before: `lacewing local up` made the CA and knows its node names. After: for each node a directory
holding `node-cert.pem` (chain), `node-key.pem` (0600) and `root-cert.pem` (trust bundle); the
node agent presents them on the control plane's TLS port, where control/ca/grpc_service.py reads
the node name from the verified certificate's SPIFFE ID `spiffe://<td>/lacewing/node/<node>`.

Kubernetes mode authenticates differently (service-account token + TokenReview); see
docs/identity.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from control.ca.authority import CertificateAuthority, IssuedChain
from control.ca.spiffe_id import node_id

NODE_CERT = "node-cert.pem"
NODE_KEY = "node-key.pem"
NODE_BUNDLE = "root-cert.pem"


@dataclass(frozen=True)
class NodeCredential:
    node: str
    cert_chain_path: Path
    key_path: Path
    bundle_path: Path
    issued: IssuedChain

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(cert chain PEM, key PEM, bundle PEM)."""
        return (self.cert_chain_path.read_bytes(), self.key_path.read_bytes(),
                self.bundle_path.read_bytes())


def issue_node_credential(ca: CertificateAuthority, node_name: str,
                          directory: str | os.PathLike[str], *,
                          ttl: int | None = None) -> NodeCredential:
    """Issue `spiffe://<td>/lacewing/node/<node_name>` and write it to `directory`.

    The lifetime is the CA's maximum unless `ttl` asks for less: `local up` reissues these on
    every start (renewal of node credentials by the agent itself is not implemented yet).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ident = node_id(node_name, trust_domain=ca.trust_domain)
    key_pem, issued = ca.issue_with_new_key(ident, ttl=ttl or ca.max_ttl)
    key_path, cert_path, bundle_path = d / NODE_KEY, d / NODE_CERT, d / NODE_BUNDLE
    _write(key_path, key_pem, 0o600)
    _write(cert_path, b"".join(issued.cert_chain), 0o644)
    _write(bundle_path, b"".join(issued.trust_bundle), 0o644)
    return NodeCredential(node=node_name, cert_chain_path=cert_path, key_path=key_path,
                          bundle_path=bundle_path, issued=issued)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
