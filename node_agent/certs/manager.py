"""The certificate lifecycle of every identity on this node, under asyncio.

Before: the node tunnel needs to terminate or originate mTLS as a workload identity and calls
`await manager.get(identity)`; the node agent's workload state calls `manager.retain(ids)` when
pods come and go. After: `get` returns a current `WorkloadCertificate` (chain, key, trust bundle)
or raises `CertificateUnavailable` — the tunnel then refuses the connection (fail closed).

Per identity one task: fetch (new key + CSR → CaClient), keep, renew at half-life with jitter,
and while the CA is unreachable retry with exponential backoff + jitter, still serving the
certificate it has for as long as that is valid. An expired certificate is never returned.
The timing rules are pure (node_agent/certs/schedule.py); `clock` (wall time, for validity) and
`rand` are injectable; sleeping uses the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry

from control.ca.spiffe_id import WorkloadId, parse_workload
from node_agent.certs import schedule
from node_agent.certs.ca_client import CaClient, CaRefused, CaUnavailable
from node_agent.certs.csr import make_csr
from node_agent.certs.metrics import CertMetrics

log = logging.getLogger("lacewing.certs")


class CertificateUnavailable(Exception):
    """No valid certificate for an identity right now; the caller must fail closed."""


@dataclass(frozen=True)
class WorkloadCertificate:
    identity: WorkloadId
    cert_chain_pem: bytes  # leaf first, then intermediates
    key_pem: bytes
    trust_bundle_pem: bytes  # every root to trust (several during a rotation)
    serial: int
    not_before: float
    not_after: float


@dataclass
class _Entry:
    identity: WorkloadId
    current: WorkloadCertificate | None = None
    last_error: str | None = None
    failures: int = 0
    outcomes: int = 0  # attempts finished, success or not
    next_attempt_at: float | None = None
    task: asyncio.Task | None = None
    dropped: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


class CertificateManager:
    def __init__(self, ca: CaClient, *, registry: CollectorRegistry | None = None,
                 validity_seconds: int = 0, renew_fraction: float = 0.5, jitter: float = 0.05,
                 backoff: schedule.Backoff = schedule.DEFAULT_BACKOFF, fetch_timeout: float = 10.0,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self._ca = ca
        self._validity = validity_seconds
        self._fraction = renew_fraction
        self._jitter = jitter
        self._backoff = backoff
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._rand = rand
        self._entries: dict[WorkloadId, _Entry] = {}
        self._bundle = b""
        self._metrics = CertMetrics(registry or CollectorRegistry(), self._expiry_seconds)

    # ------------------------------------------------------------------ public API
    async def get(self, identity: WorkloadId | str) -> WorkloadCertificate:
        """A valid certificate for `identity`, fetched if need be; CertificateUnavailable if none.

        With no valid certificate: if the last attempt failed, raises at once with its error;
        otherwise waits at most `fetch_timeout` for the attempt under way.
        """
        ident = parse_workload(identity) if isinstance(identity, str) else identity
        entry = self._entry(ident)
        cert = self._usable(entry)
        if cert is not None:
            return cert
        if entry.failures:
            # The last attempt failed and nothing valid is left: refuse now (fail closed) rather
            # than hold the connection; the backoff loop keeps trying in the background.
            raise CertificateUnavailable(f"no valid certificate for {ident}: {entry.last_error}")
        if entry.next_attempt_at is not None:
            # Idle, yet the certificate is gone (the clock jumped, e.g. after a suspend): fetch now.
            self._restart(entry)
        seen = entry.outcomes
        try:
            async with entry.changed:
                await asyncio.wait_for(
                    entry.changed.wait_for(
                        lambda: entry.dropped or entry.outcomes > seen or self._usable(entry)),
                    self._fetch_timeout)
        except TimeoutError:
            pass
        cert = self._usable(entry)
        if cert is None:
            why = "identity left the node" if entry.dropped else (entry.last_error or "no answer")
            raise CertificateUnavailable(f"no valid certificate for {ident}: {why}")
        return cert

    def retain(self, identities: Iterable[WorkloadId | str]) -> None:
        """Keep only these identities; the others' certificates and tasks are dropped now."""
        keep = {parse_workload(i) if isinstance(i, str) else i for i in identities}
        for ident in [i for i in self._entries if i not in keep]:
            entry = self._entries.pop(ident)
            entry.dropped = True
            entry.current = None
            if entry.task is not None:
                entry.task.cancel()
            log.info("dropped certificate of %s: no longer on this node", ident)
            asyncio.get_running_loop().create_task(self._notify(entry))

    def describe(self) -> list[dict]:
        """JSON-able view for `lacewing proxy-config secret` (keys are never included)."""
        out = []
        now = self._clock()
        for ident in sorted(self._entries):
            entry = self._entries[ident]
            cert = self._usable(entry)
            row: dict = {"identity": ident.uri, "state": "valid" if cert else "pending",
                         "last_error": entry.last_error}
            if entry.next_attempt_at is not None:
                row["next_attempt"] = _iso(entry.next_attempt_at)
            if cert is not None:
                row.update(serial=format(cert.serial, "x"), not_before=_iso(cert.not_before),
                           not_after=_iso(cert.not_after),
                           seconds_to_expiry=round(cert.not_after - now, 3),
                           cert_chain=cert.cert_chain_pem.decode(),
                           trust_bundle=cert.trust_bundle_pem.decode())
            out.append(row)
        return out

    async def close(self) -> None:
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._entries.clear()

    # ------------------------------------------------------------------ internals
    def _entry(self, ident: WorkloadId) -> _Entry:
        entry = self._entries.get(ident)
        if entry is None:
            entry = self._entries[ident] = _Entry(ident)
            self._restart(entry)
        return entry

    def _restart(self, entry: _Entry) -> None:
        if entry.task is not None:
            entry.task.cancel()
        entry.task = asyncio.get_running_loop().create_task(
            self._run(entry), name=f"cert:{entry.identity.uri}")

    def _usable(self, entry: _Entry) -> WorkloadCertificate | None:
        cert = entry.current
        if cert is None:
            return None
        if not schedule.is_usable(now=self._clock(), not_after=cert.not_after):
            log.warning("certificate of %s expired at %s; not presenting it",
                        entry.identity, _iso(cert.not_after))
            entry.current = None
            return None
        if self._bundle and cert.trust_bundle_pem != self._bundle:
            # The newest bundle any answer carried wins (a root rotation reaches every identity
            # on the node with the first renewal of any of them).
            cert = replace(cert, trust_bundle_pem=self._bundle)
        return cert

    @property
    def trust_bundle_pem(self) -> bytes:
        """The newest trust bundle the CA sent this node (empty before the first answer)."""
        return self._bundle

    def _expiry_seconds(self) -> list[tuple[str, float]]:
        now = self._clock()
        return [(i.uri, e.current.not_after - now) for i, e in sorted(self._entries.items())
                if e.current is not None and e.current.not_after > now]

    async def _notify(self, entry: _Entry) -> None:
        async with entry.changed:
            entry.changed.notify_all()

    async def _run(self, entry: _Entry) -> None:
        while not entry.dropped:
            entry.next_attempt_at = None
            try:
                cert = await self._fetch(entry.identity)
            except asyncio.CancelledError:
                raise
            except CaRefused as exc:
                self._failed(entry, "refused", str(exc))
            except CaUnavailable as exc:
                self._failed(entry, "unavailable", f"CA unreachable: {exc}")
            except Exception as exc:  # noqa: BLE001 - a bad answer must not kill the lifecycle
                self._failed(entry, "error", f"{type(exc).__name__}: {exc}")
            else:
                entry.current, entry.failures, entry.last_error = cert, 0, None
                if cert.trust_bundle_pem and cert.trust_bundle_pem != self._bundle:
                    self._bundle = cert.trust_bundle_pem
                    log.info("trust bundle now holds %d root(s)",
                             self._bundle.count(b"-----BEGIN CERTIFICATE-----"))
                self._metrics.requests.labels(result="issued").inc()
                log.info("certificate for %s, serial %x, valid until %s", entry.identity,
                         cert.serial, _iso(cert.not_after))
            entry.outcomes += 1
            await self._notify(entry)
            now = self._clock()
            if entry.failures:
                delay = self._backoff.delay(entry.failures, rand=self._rand)
            else:
                assert entry.current is not None
                delay = schedule.renewal_delay(
                    now=now, not_before=entry.current.not_before,
                    not_after=entry.current.not_after, fraction=self._fraction,
                    jitter=self._jitter, rand=self._rand)
            entry.next_attempt_at = now + delay
            await asyncio.sleep(delay)

    def _failed(self, entry: _Entry, result: str, message: str) -> None:
        entry.failures += 1
        entry.last_error = message
        self._metrics.requests.labels(result=result).inc()
        log.warning("certificate for %s not renewed (attempt %d): %s", entry.identity,
                    entry.failures, message)

    async def _fetch(self, ident: WorkloadId) -> WorkloadCertificate:
        key_pem, csr_pem = make_csr(ident.uri)
        signed = await self._ca.sign(csr_pem, validity_seconds=self._validity)
        if not signed.cert_chain:
            raise ValueError("the CA returned an empty chain")
        leaf = x509.load_pem_x509_certificate(signed.cert_chain[0])
        if _public_der(leaf.public_key()) != _public_der(
                serialization.load_pem_private_key(key_pem, None).public_key()):
            raise ValueError("the CA returned a certificate for a different key")
        uris = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        if uris != [ident.uri]:
            raise ValueError(f"the CA returned a certificate for {uris}, not {ident.uri}")
        return WorkloadCertificate(
            identity=ident, cert_chain_pem=b"".join(signed.cert_chain), key_pem=key_pem,
            trust_bundle_pem=b"".join(signed.trust_bundle), serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc.timestamp(),
            not_after=leaf.not_valid_after_utc.timestamp(),
        )
