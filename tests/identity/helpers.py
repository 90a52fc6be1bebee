"""Shared helpers for the identity tests: real CAs, real gRPC on loopback, real TLS.

Nothing here stands in for our own code; `InMemoryNodeWorkloads` is a real implementation of the
`NodeWorkloads` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from control.ca import certificates as c
from control.ca.authority import CertificateAuthority
from control.ca.grpc_server import CaServer
from control.ca.metrics import CaMetrics
from control.ca.node_credentials import issue_node_credential
from control.ca.node_workloads import InMemoryNodeWorkloads
from node_agent.certs.ca_client import GrpcCaClient

OPENSSL = "/usr/bin/openssl"


def openssl_verify(tmp: Path, *, bundle: bytes, chain: tuple[bytes, ...] | list[bytes],
                   purpose: str | None = None) -> subprocess.CompletedProcess:
    """`openssl verify -CAfile bundle [-untrusted intermediates] leaf`."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "bundle.pem").write_bytes(bundle)
    (tmp / "leaf.pem").write_bytes(chain[0])
    cmd = [OPENSSL, "verify", "-CAfile", str(tmp / "bundle.pem")]
    if len(chain) > 1:
        (tmp / "inter.pem").write_bytes(b"".join(chain[1:]))
        cmd += ["-untrusted", str(tmp / "inter.pem")]
    if purpose:
        cmd += ["-purpose", purpose]
    cmd.append(str(tmp / "leaf.pem"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def make_intermediate(root_key, root_cert: x509.Certificate, *, name: str = "Lacewing intermediate",
                      days: int = 365):
    """An intermediate CA signed by `root_key` (what a plug-in CA usually supplies)."""
    key = c.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(root_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                       critical=False)
        .sign(root_key, hashes.SHA256())
    )
    return key, cert


def write_root(directory: Path, *, trust_domain: str = "cluster.local"):
    """A root key+cert pair for plug-in layouts; returns (key, cert)."""
    key = c.new_key()
    now = time.time()
    cert = c.build_root(key=key, trust_domain=trust_domain, not_before=now - 60,
                        not_after=now + 86400 * 365)
    directory.mkdir(parents=True, exist_ok=True)
    return key, cert


async def wait_until(predicate: Callable[[], object], *, timeout: float, step: float = 0.05):
    """Wait for a condition (never asserts how long it took); AssertionError on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


class Cluster:
    """A CA served on loopback, with node credentials and a workload view."""

    def __init__(self, tmp: Path, *, ca: CertificateAuthority | None = None,
                 placements: dict[str, set[tuple[str, str]]] | None = None) -> None:
        self.tmp = tmp
        self.ca = ca or CertificateAuthority.load_or_generate(tmp / "ca")
        self.workloads = InMemoryNodeWorkloads(placements or {})
        self.registry = CollectorRegistry()
        self.metrics = CaMetrics(self.registry)
        self.server: CaServer | None = None
        self.port = 0
        self._clients: list[GrpcCaClient] = []

    async def start(self) -> None:
        self.server = CaServer(ca=self.ca, workloads=self.workloads, metrics=self.metrics,
                               address=f"127.0.0.1:{self.port}")
        self.port = self.server.port
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def client_for(self, node: str, **options) -> GrpcCaClient:
        d = self.tmp / "nodes" / node
        issue_node_credential(self.ca, node, d)
        client = GrpcCaClient.from_node_credential(f"127.0.0.1:{self.port}", d, **options)
        self._clients.append(client)
        return client

    def metric(self, name: str, **labels) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def close(self) -> None:
        for cl in self._clients:
            with contextlib.suppress(Exception):
                await cl.close()
        await self.stop()


@contextlib.asynccontextmanager
async def running_cluster(tmp: Path, **kw):
    cluster = Cluster(tmp, **kw)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.close()
