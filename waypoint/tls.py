"""TLS contexts for the waypoint's listener and for its clients (tests, node tunnels).

Before: an identity's PEM key and certificate chain and the mesh trust bundle (from the CA /
cert manager, `node_agent/certs`). After: `ssl.SSLContext`s for mutual TLS 1.3 whose peer
certificates `proxy.peer_principal` turns into the Istio principal that authorization uses.
ALPN offers `h2` and `http/1.1`.
"""

from __future__ import annotations

import os
import ssl
import tempfile


def _load(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    # ssl wants files; write them to a private temporary directory and remove it at once.
    with tempfile.TemporaryDirectory(prefix="lw-wp-tls-") as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        with open(cert, "wb") as f:
            f.write(chain_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)


def reload(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Put a renewed certificate into a context in place: new handshakes use it."""
    _load(ctx, chain_pem, key_pem)


def server_context(chain_pem: bytes, key_pem: bytes, trust_bundle_pem: bytes, *,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load(ctx, chain_pem, key_pem)
    ctx.load_verify_locations(cadata=trust_bundle_pem.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def client_context(chain_pem: bytes, key_pem: bytes, trust_bundle_pem: bytes, *,
                   alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """SPIFFE peers are checked by their URI SAN, not a host name: hostname checks are off."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, chain_pem, key_pem)
    ctx.load_verify_locations(cadata=trust_bundle_pem.decode())
    ctx.set_alpn_protocols(list(alpn))
    return ctx
