"""The control plane assembled: sources → writer → compiler → catalog → xDS, plus the CA.

Before: a `CertificateAuthority` and the sources to follow (control/sources/). After:
`await plane.start()` serves, on one mTLS gRPC port (15012), the CA (control/ca/) and the delta
xDS push (control/xds/server.py); on the metrics port (15014) `/metrics` (its own registry),
`/ready` (200 once every source has synced) and `/debug/status` (what `lacewing status` shows).
The compiler answers the CA's `NodeWorkloads` question, so a node agent gets certificates only
for service accounts of pods on its node now. `stop()` ends everything it started.

Several replicas may run side by side: each follows the same sources and computes the same
resource versions, so a client that fails over to another replica receives only the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from control import debug_http
from control.ca.authority import CertificateAuthority
from control.ca.grpc_server import CaServer
from control.catalog import Catalog
from control.compiler import Compiler
from control.metrics import ControlMetrics
from control.sources import Source
from control.state import ClusterState
from control.writer import Writer
from control.xds.server import XdsServer

log = logging.getLogger("lacewing.control")

STATUS_API_VERSION = "lacewing.dev/v1alpha1"

# Streams live for days: ping idle peers so that a node that vanished (or a network partition)
# is noticed within about a minute, and let node agents ping us as often as every 5 s.
# Timeouts are generous: a busy peer must not be mistaken for a dead one.
SERVER_OPTIONS = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
)


class ControlPlane:
    def __init__(self, *, ca: CertificateAuthority, sources: list[Source],
                 grpc_address: str = "[::]:15012",
                 metrics_host: str | None = "0.0.0.0", metrics_port: int = 15014) -> None:
        self.ca = ca
        self.trust_domain = ca.trust_domain
        self.sources = sources
        self.registry = CollectorRegistry()
        self.metrics = ControlMetrics(self.registry)
        self.state = ClusterState()
        self.catalog = Catalog()
        self.compiler = Compiler(self.state, self.catalog, trust_domain=ca.trust_domain)
        self.writer = Writer(state=self.state, compiler=self.compiler, catalog=self.catalog,
                             metrics=self.metrics, sources={s.name for s in sources})
        self.metrics.watch_catalog(self.catalog.counts, lambda: self.catalog.version)
        self.ca_server = CaServer(ca=ca, workloads=self.compiler, registry=self.registry,
                                  address=grpc_address, options=SERVER_OPTIONS)
        self.xds = XdsServer(catalog=self.catalog, metrics=self.metrics,
                             trust_domain=ca.trust_domain)
        self.xds.register(self.ca_server.server)
        self.port = self.ca_server.port
        self._metrics_host = metrics_host
        self._metrics_port = metrics_port
        self.metrics_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task] = []
        self.started_at = time.time()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_server is None:
            return None
        return self.metrics_server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run_source(source),
                                                   name=f"source:{source.name}"))
        await self.ca_server.start()
        if self._metrics_host is not None:
            self.metrics_server = await debug_http.serve(self.routes(), host=self._metrics_host,
                                                         port=self._metrics_port)
        log.info("control plane serving gRPC (CA + xDS) on port %d, trust domain %s",
                 self.port, self.trust_domain)

    async def _run_source(self, source: Source) -> None:
        while True:
            try:
                await source.run(self.writer.queue)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a source restarts; the served state stays
                log.exception("source %s failed; restarting it in 1 s", source.name)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.metrics_server is not None:
            self.metrics_server.close()
            await self.metrics_server.wait_closed()
            self.metrics_server = None
        await self.ca_server.stop(0.2)

    # --- views ----------------------------------------------------------------------------------
    def status(self) -> dict:
        from control.xds.resources import SHORT_NAMES
        return {
            "apiVersion": STATUS_API_VERSION, "kind": "ControlPlaneStatus",
            "replica": f"{socket.gethostname()}/{os.getpid()}",
            "ready": self.catalog.ready, "version": self.catalog.version_info,
            "startedAt": self.started_at,
            "resources": {SHORT_NAMES[t]: n for t, n in self.catalog.counts().items()},
            "refused": [{"object": str(k), "problems": [f"{p.path}: {p.message}" for p in ps]}
                        for k, ps in sorted(self.compiler.problems.items())],
            "lastCompileSeconds": round(self.compiler.last_compile_seconds, 6),
            "nodes": sorted(key.name for key, _ in self.state.items("Node")),
            "clients": self.xds.describe(),
        }

    def routes(self) -> dict[str, debug_http.Route]:
        def metrics(_q):
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

        def ready(_q):
            return (200, "text/plain", b"ready\n") if self.catalog.ready else \
                (503, "text/plain", b"waiting for sources\n")

        return {"/metrics": metrics, "/ready": ready,
                "/debug/status": lambda _q: debug_http.json_reply(self.status())}
