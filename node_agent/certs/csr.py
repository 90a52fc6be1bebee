"""Keys and CSRs for one workload identity.

Before: the certificate manager decided it needs a (new) certificate for a SPIFFE ID. After: a
fresh ECDSA P-256 key (PKCS#8 PEM) and a PEM PKCS#10 request whose only SAN is that URI; the
key never leaves the node agent.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from control.ca.certificates import key_pem, new_key


def make_csr(spiffe_uri: str) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for `spiffe_uri`."""
    key = new_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_uri)]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM)
