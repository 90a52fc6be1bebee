"""The waypoint's own SVID: issued, renewed before it expires, swapped into new connections.

Before: where certificates come from — a CA directory (`--ca-dir`: local mode and standalone
runs, as the standalone node tunnel does; `ca_dir_source`) or the control plane's CA over gRPC
with the node credential (`--credentials`: `node_agent/certs/ca_client.py`; `ca_client_source`)
— and the waypoint's SPIFFE ID (its snapshot's `waypoint.identity`). After: `SvidRotation`
holds the current certificate and two TLS contexts made from it: the listener's (node tunnels
connect to it presenting the clients' SVIDs) and the client one (to endpoints' node tunnels).

The timing is the node agent's (docs/identity.md; `node_agent/certs/schedule.py`): renew at
`notBefore + life × (0.5 ± 0.05)`, a new key each time; while the CA is away (unreachable,
refusing, or a CA directory that cannot be read) retry with the shared exponential backoff and
keep serving the certificate in hand as long as it is valid. A renewal builds *new* contexts
and swaps them in one assignment: the listener's base context hands every new handshake to the
current one (`sni_callback`, which OpenSSL calls for each ClientHello, with or without SNI), and
`Tunnels.client_context` is replaced for new upstream connections. Open connections keep the
certificate they were made with. An expired certificate is never presented: a handshake that
would need it is refused (fail closed), and peers would refuse it anyway.

Exposed: `describe()` (identity, serial, validity, seconds to expiry, renewals, last error —
never the key) for `/debug/snapshot`, and `lacewing_waypoint_certificate_expiry_seconds` plus
`lacewing_waypoint_certificate_renewals_total{result}` in the waypoint's registry.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from control.backoff import Backoff
from control.ca.spiffe_id import WorkloadId, parse_workload
from node_agent.certs import schedule
from node_agent.certs.ca_client import CaClient
from node_agent.certs.csr import make_csr
from node_agent.certs.manager import WorkloadCertificate
from waypoint import tls

log = logging.getLogger("lacewing.waypoint.svid")

Source = Callable[[], Awaitable[WorkloadCertificate]]
"""Issues a fresh certificate (new key) for the waypoint's identity, or raises."""


# --- sources ----------------------------------------------------------------------------------

def ca_dir_source(directory: str | Path, identity: str, *, ttl: int = 0) -> Source:
    """Issue from the CA files in `directory` (Istio's `cacerts` layout), read afresh at each
    renewal so a plug-in CA's rotation is picked up; a directory that cannot be read is an
    outage like an unreachable CA. (The first start may generate the root:
    `CertificateAuthority.load_or_generate`, done by the caller.)"""
    from control.ca.authority import CertificateAuthority

    wid = parse_workload(identity)

    async def issue() -> WorkloadCertificate:
        ca = CertificateAuthority.from_plugin(directory)
        key_pem, chain = ca.issue_with_new_key(wid, ttl=ttl or None)
        return WorkloadCertificate(
            identity=wid, cert_chain_pem=b"".join(chain.cert_chain), key_pem=key_pem,
            trust_bundle_pem=b"".join(chain.trust_bundle), serial=chain.serial,
            not_before=chain.not_before, not_after=chain.not_after)

    return issue


def ca_client_source(client: CaClient, identity: str, *, ttl: int = 0) -> Source:
    """Issue through the control plane's CA (`GrpcCaClient` with the node credential): a new
    key and CSR each time; the answer is checked to be for that key and that identity."""
    wid = parse_workload(identity)

    async def issue() -> WorkloadCertificate:
        key_pem, csr_pem = make_csr(wid.uri)
        signed = await client.sign(csr_pem, validity_seconds=ttl)
        return _checked(wid, key_pem, signed.cert_chain, signed.trust_bundle)

    return issue


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _checked(wid: WorkloadId, key_pem: bytes, chain: tuple[bytes, ...],
             bundle: tuple[bytes, ...]) -> WorkloadCertificate:
    if not chain:
        raise ValueError("the CA returned an empty chain")
    leaf = x509.load_pem_x509_certificate(chain[0])
    key = serialization.load_pem_private_key(key_pem, None)
    if _public_der(leaf.public_key()) != _public_der(key.public_key()):
        raise ValueError("the CA returned a certificate for a different key")
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [wid.uri]:
        raise ValueError(f"the CA returned a certificate for {uris}, not {wid.uri}")
    return WorkloadCertificate(
        identity=wid, cert_chain_pem=b"".join(chain), key_pem=key_pem,
        trust_bundle_pem=b"".join(bundle), serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp())


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


# --- the rotation -------------------------------------------------------------------------------

class SvidUnavailable(Exception):
    """No certificate could be issued (the message is the CA's or the source's error)."""


class _Collector(Collector):
    """Computed at scrape time from the rotation's state."""

    def __init__(self, rotation: SvidRotation) -> None:
        self._rotation = rotation

    def collect(self):
        rot = self._rotation
        g = GaugeMetricFamily(
            "lacewing_waypoint_certificate_expiry_seconds",
            "Seconds until the waypoint's current SVID expires (negative: expired).",
            labels=["identity"])
        cert = rot.current
        if cert is not None:
            g.add_metric([cert.identity.uri], round(cert.not_after - rot.clock(), 3))
        yield g
        c = CounterMetricFamily("lacewing_waypoint_certificate_renewals",
                                "Attempts to issue the waypoint's SVID, by result.",
                                labels=["result"])
        for result, n in rot.attempts.items():
            c.add_metric([result], n)
        yield c


class SvidRotation:
    """The waypoint's SVID and the TLS contexts made from it; `run()` keeps it current."""

    def __init__(self, source: Source, *, fraction: float = 0.5, jitter: float = 0.05,
                 backoff: Backoff = schedule.DEFAULT_BACKOFF,
                 client_alpn: tuple[str, ...] = ("http/1.1",),
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self._source = source
        self._fraction = fraction
        self._jitter = jitter
        self._backoff = backoff
        self._client_alpn = client_alpn
        self.clock = clock
        self._rand = rand
        self.current: WorkloadCertificate | None = None
        self.failures = 0               # consecutive failed attempts
        self.renewals = 0               # certificates obtained after the first
        self.last_error: str | None = None
        self.next_attempt_at: float | None = None
        self._base: ssl.SSLContext | None = None
        self._server: ssl.SSLContext | None = None
        self.client_context: ssl.SSLContext | None = None
        self.subscribers: list[Callable[[SvidRotation], None]] = []
        self.attempts = {"issued": 0, "failed": 0}

    # --- contexts ---------------------------------------------------------------------------
    @property
    def server_context(self) -> ssl.SSLContext:
        """The listener's context (give it to `WaypointServer`): every handshake on it is
        handed to the newest certificate's context."""
        if self._base is None:
            raise RuntimeError("no certificate yet: await first() before listening")
        return self._base

    def _select(self, sslobj, _server_name, _ctx) -> int | None:
        cert = self.current
        if cert is None or self.clock() >= cert.not_after:
            log.error("refusing a handshake: the waypoint's certificate has expired and no "
                      "new one could be issued (%s)", self.last_error)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        server = self._server
        if sslobj.context is not server:
            sslobj.context = server
        return None

    def _install(self, cert: WorkloadCertificate) -> None:
        """Make new contexts for `cert` and swap them in (each one assignment)."""
        server = tls.server_context(cert.cert_chain_pem, cert.key_pem, cert.trust_bundle_pem)
        client = tls.client_context(cert.cert_chain_pem, cert.key_pem, cert.trust_bundle_pem,
                                    alpn=self._client_alpn)
        if self._base is None:
            server.sni_callback = self._select
            self._base = server
        self._server = server
        self.client_context = client
        self.current = cert
        for fn in self.subscribers:
            fn(self)

    # --- lifecycle --------------------------------------------------------------------------
    async def _attempt(self) -> bool:
        try:
            cert = await self._source()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: keep the current one, retry
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.attempts["failed"] += 1
            held = self.current
            log.warning("waypoint SVID not renewed (attempt %d): %s; %s", self.failures,
                        self.last_error,
                        f"serving serial {held.serial:x} until {_iso(held.not_after)}"
                        if held else "no certificate yet")
            return False
        first = self.current is None
        self._install(cert)
        self.failures, self.last_error = 0, None
        if not first:
            self.renewals += 1
        self.attempts["issued"] += 1
        log.info("waypoint SVID %s: %s, serial %x, valid until %s",
                 "issued" if first else "renewed", cert.identity.uri, cert.serial,
                 _iso(cert.not_after))
        return True

    async def first(self, *, retry: bool = True) -> WorkloadCertificate:
        """The first certificate. With `retry`, keep trying with backoff (the CA may not be
        up yet; nothing can be served without it); without, `SvidUnavailable` at once."""
        while not await self._attempt():
            if not retry:
                raise SvidUnavailable(self.last_error or "no certificate")
            await asyncio.sleep(self._backoff.delay(self.failures, rand=self._rand))
        assert self.current is not None
        return self.current

    def next_delay(self) -> float:
        """Seconds until the next attempt: the renewal time, or the backoff after failures."""
        if self.failures:
            return self._backoff.delay(self.failures, rand=self._rand)
        assert self.current is not None
        return schedule.renewal_delay(now=self.clock(), not_before=self.current.not_before,
                                      not_after=self.current.not_after,
                                      fraction=self._fraction, jitter=self._jitter,
                                      rand=self._rand)

    async def run(self) -> None:
        """Renew forever (cancel to stop). Needs `first()` to have succeeded."""
        while True:
            delay = self.next_delay()
            self.next_attempt_at = self.clock() + delay
            await asyncio.sleep(delay)
            self.next_attempt_at = None
            await self._attempt()

    # --- what an operator sees --------------------------------------------------------------
    def describe(self) -> dict:
        cert = self.current
        row: dict = {"state": "none", "renewals": self.renewals,
                     "failures": self.failures, "last_error": self.last_error}
        if self.next_attempt_at is not None:
            row["next_attempt"] = _iso(self.next_attempt_at)
        if cert is not None:
            left = cert.not_after - self.clock()
            row.update(identity=cert.identity.uri, state="valid" if left > 0 else "expired",
                       serial=format(cert.serial, "x"), not_before=_iso(cert.not_before),
                       not_after=_iso(cert.not_after), seconds_to_expiry=round(left, 3))
        return row

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(_Collector(self))


def attach(rotation: SvidRotation, waypoint, tunnels) -> None:
    """Wire a rotation into a waypoint: renewed client contexts reach `tunnels` (new upstream
    connections), the certificate shows in `/debug/snapshot` and its metrics on `/metrics`."""
    def follow(rot: SvidRotation) -> None:
        tunnels.client_context = rot.client_context

    rotation.subscribers.append(follow)
    if rotation.client_context is not None:
        follow(rotation)
    waypoint.certificate = rotation.describe
    rotation.register(waypoint.metrics.registry)
