"""The control plane's TLS gRPC endpoint for certificate signing (port 15012).

Before: a `CertificateAuthority` and a `NodeWorkloads`. After: a running `grpc.aio` server that
requires client certificates chaining to the CA's trust bundle, serves
`lacewing.ca.v1.CertificateService`, and presents the control plane's own X.509-SVID
`spiffe://<td>/ns/lacewing-system/sa/lacewing-control` (with the DNS name
`lacewing-control.lacewing-system.svc`, which clients check; the CA never puts DNS names into
certificates it signs from CSRs, so no workload can pose as the control plane).

Serving material is fetched by gRPC at every handshake (`dynamic_ssl_server_credentials`): the
server certificate is reissued at half of its life, and a swapped CA (root rotation) takes
effect for new connections without a restart. Issue 5's config push can register its own
servicers on the same server via `CaServer.server` before `start()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from prometheus_client import CollectorRegistry

from control.api import ca_pb2_grpc
from control.ca.authority import CertificateAuthority, IssuedChain
from control.ca.grpc_service import CertificateService
from control.ca.metrics import CaMetrics
from control.ca.node_workloads import NodeWorkloads
from control.ca.spiffe_id import (
    CONTROL_DNS_NAMES,
    CONTROL_NAMESPACE,
    CONTROL_SERVICE_ACCOUNT,
    workload_id,
)

DEFAULT_PORT = 15012


class ServingIdentity:
    """The control plane's own certificate, reissued at half-life; thread-safe."""

    def __init__(self, ca: CertificateAuthority, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._ca = ca
        self._version = 0
        self._served_version = -1
        self._key: bytes = b""
        self._issued: IssuedChain | None = None
        self._renew_at = 0.0
        self._refresh_locked()

    def _refresh_locked(self) -> None:
        ident = workload_id(CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT,
                            trust_domain=self._ca.trust_domain)
        self._key, self._issued = self._ca.issue_with_new_key(ident, dns_names=CONTROL_DNS_NAMES)
        now = self._clock()
        self._renew_at = now + (self._issued.not_after - now) / 2
        self._version += 1

    def replace_ca(self, ca: CertificateAuthority) -> None:
        with self._lock:
            self._ca = ca
            self._refresh_locked()

    @property
    def issued(self) -> IssuedChain:
        assert self._issued is not None
        return self._issued

    def configuration(self, *, only_if_changed: bool):
        with self._lock:
            if self._clock() >= self._renew_at:
                self._refresh_locked()
            if only_if_changed and self._served_version == self._version:
                return None
            self._served_version = self._version
            assert self._issued is not None
            return grpc.ssl_server_certificate_configuration(
                [(self._key, b"".join(self._issued.cert_chain))],
                root_certificates=b"".join(self._ca.trust_bundle),
            )


class CaServer:
    """A grpc.aio server with the CertificateService on mTLS. Use `await start()`/`stop()`."""

    def __init__(self, *, ca: CertificateAuthority, workloads: NodeWorkloads,
                 registry: CollectorRegistry | None = None, metrics: CaMetrics | None = None,
                 address: str = f"[::]:{DEFAULT_PORT}",
                 options: tuple[tuple[str, int | str], ...] = ()) -> None:
        """Pass `registry` (metrics are made in it) or `metrics` (kept across restarts);
        `options` are gRPC server options (the config push sets keepalive ones)."""
        if metrics is None:
            metrics = CaMetrics(registry if registry is not None else CollectorRegistry())
        self.metrics = metrics
        self.service = CertificateService(ca=ca, workloads=workloads, metrics=self.metrics)
        self.identity = ServingIdentity(ca)
        self.server = grpc.aio.server(options=list(options))
        ca_pb2_grpc.add_CertificateServiceServicer_to_server(self.service, self.server)
        creds = grpc.dynamic_ssl_server_credentials(
            self.identity.configuration(only_if_changed=False),
            lambda: self.identity.configuration(only_if_changed=True),
            require_client_authentication=True,
        )
        self.port = self.server.add_secure_port(address, creds)
        if not self.port:
            raise OSError(f"cannot listen on {address}: is the port in use?")

    def replace_ca(self, ca: CertificateAuthority) -> None:
        """Switch signing CA and trust bundle (root rotation) for new calls and connections."""
        self.service.ca = ca
        self.identity.replace_ca(ca)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float | None = 0.5) -> None:
        await self.server.stop(grace)
