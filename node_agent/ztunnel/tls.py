"""TLS for the tunnel: contexts per identity, the server's choice of certificate by SNI, client
session resumption, and `TlsConnection` — one TLS 1.3 connection driven through memory BIOs.

Before: `CertSource.get(identity)` (the node agent's `CertificateManager`) gives a current
`WorkloadCertificate` or raises `CertificateUnavailable`. After: `Contexts.client(identity)`
gives the context a tunnel client presents that identity with; `Contexts.server_context` is the
one context :15008 accepts with — its SNI callback switches each connection to the context of
the identity the client asked for (`wire.sni_for`), or refuses the handshake when that identity
is not served here or has no certificate yet (fail closed). `Contexts.prepare(ids)` fetches the
certificates of this node's identities ahead of time, since the SNI callback cannot wait.

Resumption: TLS 1.3 tickets (Python's `SSLObject.session`), cached per (source identity, next
hop, expected identity). A resumed handshake skips certificate signing and chain verification
on both sides; the server still knows the client's SVID (it is kept in the session). Tickets are
only as old as the server context that issued them: the base server context is rebuilt when the
trust bundle changes, which invalidates every ticket. Contexts are rebuilt per certificate
serial, so a renewed certificate is used by every new full handshake.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterable
from typing import Protocol

from node_agent.certs.manager import CertificateUnavailable, WorkloadCertificate
from node_agent.certs.tls import ssl_context
from node_agent.ztunnel import wire

log = logging.getLogger("lacewing.ztunnel.tls")
READ_SIZE = 1 << 18


class CertSource(Protocol):
    async def get(self, identity: str) -> WorkloadCertificate: ...


class Contexts:
    def __init__(self, certs: CertSource, *, session_ttl: float = 3600.0,
                 on_sni_refused=None, alpn: tuple[str, ...] = ()) -> None:
        self._certs = certs
        self._alpn = list(alpn)     # offered (client) and accepted (server) on every context
        # identity -> (serial, context, last asked, renew-after time)
        self._client: dict[str, tuple[int, ssl.SSLContext, float, float]] = {}
        self._server: dict[str, tuple[int, ssl.SSLContext]] = {}
        self._sni: dict[str, str] = {}
        self._bundle: bytes | None = None
        self._base: ssl.SSLContext | None = None
        self._sessions: dict[tuple, tuple[float, ssl.SSLSession, ssl.SSLContext]] = {}
        self._session_ttl = session_ttl
        self._on_sni_refused = on_sni_refused or (lambda reason: None)

    # ------------------------------------------------------------------ client side
    async def client(self, identity: str) -> ssl.SSLContext:
        """The context presenting `identity`. The certificate source is asked again at most
        every `recheck` seconds (it may live on another thread's loop), and always once the
        certificate is past its half-life or expired."""
        now = time.time()
        have = self._client.get(identity)
        if have is not None and now - have[2] < self.recheck and now < have[3]:
            return have[1]
        cert = await self._certs.get(identity)
        if have is None or have[0] != cert.serial:
            have = (cert.serial, self._with_alpn(ssl_context(cert, server=False)), now,
                    (cert.not_before + cert.not_after) / 2)
        else:
            have = (have[0], have[1], now, have[3])
        self._client[identity] = have
        return have[1]

    recheck = 5.0

    def _with_alpn(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        if self._alpn:
            ctx.set_alpn_protocols(self._alpn)
        return ctx

    def session(self, key: tuple, ctx: ssl.SSLContext) -> ssl.SSLSession | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self._session_ttl or entry[2] is not ctx:
            del self._sessions[key]        # expired, or issued to a context since replaced
            return None
        return entry[1]

    def remember(self, key: tuple, session: ssl.SSLSession | None, ctx: ssl.SSLContext) -> None:
        if session is not None:
            self._sessions[key] = (time.monotonic(), session, ctx)

    def forget(self, key: tuple) -> None:
        self._sessions.pop(key, None)

    # ------------------------------------------------------------------ server side
    @property
    def server_context(self) -> ssl.SSLContext:
        if self._base is None:
            raise CertificateUnavailable("no certificate of this node's workloads yet")
        return self._base

    def serves(self, identity: str) -> bool:
        return identity in self._server

    async def prepare(self, identities: Iterable[str]) -> list[str]:
        """Fetch certificates for the identities served here; returns those that failed."""
        wanted = set(identities)
        failed = []
        for ident in sorted(wanted):
            try:
                cert = await self._certs.get(ident)
            except CertificateUnavailable as exc:
                log.warning("no certificate for %s yet: %s (its connections are refused)",
                            ident, exc)
                failed.append(ident)
                continue
            self._install_server(ident, cert)
        for gone in set(self._server) - wanted:
            del self._server[gone]
        for gone in set(self._client) - wanted:
            del self._client[gone]
        self._sni = wire.sni_index(self._server)
        return failed

    def _install_server(self, ident: str, cert: WorkloadCertificate) -> None:
        if cert.trust_bundle_pem != self._bundle:
            self._bundle = cert.trust_bundle_pem
            base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            base.minimum_version = ssl.TLSVersion.TLSv1_3
            base.verify_mode = ssl.CERT_REQUIRED
            base.load_verify_locations(cadata=cert.trust_bundle_pem.decode())
            base.sni_callback = self._select
            self._with_alpn(base)
            self._base = base
            self._sessions.clear()
        have = self._server.get(ident)
        if have is None or have[0] != cert.serial:
            ctx = self._with_alpn(ssl_context(cert, server=True))
            self._server[ident] = (cert.serial, ctx)

    def _select(self, obj, server_name, _ctx):
        ident = self._sni.get(server_name or "")
        if ident is None:
            self._on_sni_refused("unknown_identity")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        have = self._server.get(ident)
        if have is None:
            self._on_sni_refused("no_certificate")
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        obj.context = have[1]
        obj.lw_identity = ident
        return None


_PEER_IDS: dict[bytes, str | None] = {}


class TlsConnection:
    """One TLS connection over memory BIOs: bytes from the network in, plaintext out, and back.

    `receive(cipher)` returns the plaintext chunks it decrypted (after the handshake);
    `outgoing()` is what must be written to the network now. `eof` is set when the peer sent
    close_notify (a half-close: we may still send)."""

    __slots__ = ("incoming", "out", "obj", "handshaken", "eof", "closed_write")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
                 session: ssl.SSLSession | None = None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.out, server_side=server_side,
                                server_hostname=server_hostname, session=session)
        self.handshaken = False
        self.eof = False
        self.closed_write = False

    def handshake(self) -> bool:
        """Advance the handshake; True once complete. Raises ssl.SSLError on failure."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.handshaken = True
        return True

    def receive(self, data: bytes) -> list[bytes]:
        if data:
            self.incoming.write(data)
        chunks = []
        read, obj, incoming = self.obj.read, self.obj, self.incoming
        while True:
            try:
                chunk = read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = True
                break
            if not chunk:
                self.eof = True
                break
            chunks.append(chunk)
            if not incoming.pending and not obj.pending():
                break       # nothing left to decrypt: skip the read that would raise
        return chunks

    def send(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.out.read()

    def outgoing(self) -> bytes:
        return self.out.read()

    def close_write(self) -> bytes:
        """Send close_notify (TLS 1.3: a half-close); we can still read."""
        if not self.closed_write:
            self.closed_write = True
            try:
                self.obj.unwrap()
            except (ssl.SSLWantReadError, ssl.SSLError):
                pass
        return self.out.read()

    def peer_spiffe_id(self) -> str | None:
        """The verified peer's SPIFFE ID (exactly one URI SAN), or None. Parsed once per
        certificate: resumed connections present the same one again and again."""
        der = self.obj.getpeercert(binary_form=True)
        if not der:
            return None
        try:
            return _PEER_IDS[der]
        except KeyError:
            pass
        from cryptography import x509

        from control.ca.certificates import uri_sans
        uris = uri_sans(x509.load_der_x509_certificate(der))
        ident = uris[0] if len(uris) == 1 else None
        if len(_PEER_IDS) >= 4096:
            _PEER_IDS.clear()
        _PEER_IDS[der] = ident
        return ident

    @property
    def resumed(self) -> bool:
        return self.obj.session_reused
