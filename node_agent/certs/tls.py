"""TLS contexts from a workload certificate: mutual, TLS 1.3, trust = the SPIFFE bundle.

Before: `await CertificateManager.get(identity)` returned a `WorkloadCertificate`. After: an
`ssl.SSLContext` that presents that chain and accepts any peer whose chain reaches a root of the
bundle (several roots during a rotation). Host names are not checked — peers are named by SPIFFE
ID, which the caller reads with `peer_spiffe_id` and checks against what it expected (the
outbound request's destination identity, or authorization policy).

The private key never touches a file system: it is handed to OpenSSL through a memfd.
"""

from __future__ import annotations

import contextlib
import os
import ssl

from cryptography import x509

from control.ca.certificates import uri_sans
from node_agent.certs.manager import WorkloadCertificate


@contextlib.contextmanager
def _memfile(data: bytes):
    fd = os.memfd_create("lacewing-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def ssl_context(cert: WorkloadCertificate, *, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.trust_bundle_pem.decode())
    with _memfile(cert.cert_chain_pem + cert.key_pem) as path:
        ctx.load_cert_chain(path)
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SPIFFE ID of a verified peer (its single URI SAN), or None."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    uris = uri_sans(x509.load_der_x509_certificate(der))
    return uris[0] if len(uris) == 1 else None
