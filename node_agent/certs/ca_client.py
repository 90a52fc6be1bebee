"""How the node agent reaches the CA: a narrow `CaClient` protocol and its gRPC implementation.

Before: the certificate manager (node_agent/certs/manager.py) has a CSR. After: a signed chain
and the current trust bundle, or `CaUnavailable` (retry later: network, deadline, server down)
or `CaRefused` (the CA said no: PERMISSION_DENIED / INVALID_ARGUMENT).

Like ztunnel's `CaClientTrait`, the protocol is what the manager depends on; tests use the real
`GrpcCaClient` against an in-process CA on loopback. `GrpcCaClient` authenticates with the node
credential (control/ca/node_credentials.py) and checks the control plane's certificate against the
trust bundle and its DNS name. When a response carries a new trust bundle (root rotation), the
next call uses a channel that trusts it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

from control.api import ca_pb2, ca_pb2_grpc
from control.ca.spiffe_id import CONTROL_DNS_NAMES


@dataclass(frozen=True)
class SignedCertificate:
    cert_chain: tuple[bytes, ...]  # PEM, leaf first
    trust_bundle: tuple[bytes, ...]  # PEM roots


class CaUnavailable(Exception):
    """The CA could not be reached or did not answer in time; retrying may help."""


class CaRefused(Exception):
    """The CA refused the request; the message carries its status and reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class CaClient(Protocol):
    async def sign(self, csr_pem: bytes, *, validity_seconds: int) -> SignedCertificate: ...

    async def trust_bundle(self) -> tuple[bytes, ...]: ...

    async def close(self) -> None: ...


_REFUSALS = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
             grpc.StatusCode.UNAUTHENTICATED}


class GrpcCaClient:
    """`CaClient` over `lacewing.ca.v1.CertificateService` with mTLS."""

    def __init__(self, target: str, *, cert_chain_pem: bytes, key_pem: bytes, roots_pem: bytes,
                 server_name: str = CONTROL_DNS_NAMES[0], timeout: float = 5.0,
                 reconnect_backoff_max: float = 10.0) -> None:
        self._target = target
        self._cert_chain = cert_chain_pem
        self._key = key_pem
        self._roots = roots_pem
        self._server_name = server_name
        self._timeout = timeout
        # The manager has its own retry schedule; keep gRPC's reconnect backoff short so that a
        # CA that comes back is used soon after (gRPC's default grows to two minutes).
        self._reconnect_ms = int(reconnect_backoff_max * 1000)
        self._channel: grpc.aio.Channel | None = None
        self._stub: ca_pb2_grpc.CertificateServiceStub | None = None

    @classmethod
    def from_node_credential(cls, target: str, directory: str | os.PathLike[str],
                             **options) -> GrpcCaClient:
        d = Path(directory)
        return cls(target, cert_chain_pem=(d / "node-cert.pem").read_bytes(),
                   key_pem=(d / "node-key.pem").read_bytes(),
                   roots_pem=(d / "root-cert.pem").read_bytes(), **options)

    def _get_stub(self) -> ca_pb2_grpc.CertificateServiceStub:
        if self._stub is None:
            creds = grpc.ssl_channel_credentials(
                root_certificates=self._roots, private_key=self._key,
                certificate_chain=self._cert_chain,
            )
            self._channel = grpc.aio.secure_channel(
                self._target, creds,
                options=[("grpc.ssl_target_name_override", self._server_name),
                         ("grpc.default_authority", self._server_name),
                         ("grpc.initial_reconnect_backoff_ms", min(1000, self._reconnect_ms)),
                         ("grpc.min_reconnect_backoff_ms", min(1000, self._reconnect_ms)),
                         ("grpc.max_reconnect_backoff_ms", self._reconnect_ms)],
            )
            self._stub = ca_pb2_grpc.CertificateServiceStub(self._channel)
        return self._stub

    async def _adopt_bundle(self, bundle: tuple[bytes, ...]) -> None:
        roots = b"".join(bundle)
        if bundle and roots != self._roots:
            self._roots = roots
            await self._drop_channel()

    async def _drop_channel(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()

    async def _call(self, method: str, request):
        stub = self._get_stub()
        try:
            return await getattr(stub, method)(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _REFUSALS:
                raise CaRefused(exc.code().name, exc.details() or "") from None
            raise CaUnavailable(f"{exc.code().name}: {exc.details()}") from None

    async def sign(self, csr_pem: bytes, *, validity_seconds: int = 0) -> SignedCertificate:
        resp = await self._call("CreateCertificate", ca_pb2.CreateCertificateRequest(
            csr=csr_pem.decode(), validity_duration=int(validity_seconds)))
        signed = SignedCertificate(
            cert_chain=tuple(p.encode() for p in resp.cert_chain),
            trust_bundle=tuple(p.encode() for p in resp.trust_bundle),
        )
        await self._adopt_bundle(signed.trust_bundle)
        return signed

    async def trust_bundle(self) -> tuple[bytes, ...]:
        resp = await self._call("GetTrustBundle", ca_pb2.GetTrustBundleRequest())
        bundle = tuple(p.encode() for p in resp.roots)
        await self._adopt_bundle(bundle)
        return bundle

    async def close(self) -> None:
        await self._drop_channel()
