"""The delta xDS client of a node agent (or a waypoint): connect, subscribe, apply, ACK/NACK.

Before: a node credential (control/ca/node_credentials.py: node-cert.pem, node-key.pem,
root-cert.pem) and the control plane replicas' addresses. After: `run()` keeps one
`DeltaAggregatedResources` stream open to one replica at a time; every response is decoded
(control/xds/resources.py) and applied as a whole to the `XdsState` (node_agent/xds/state.py);
resources that do not decode are rejected — reported in the NACK's details
(`lacewing.mesh.v1.RejectedResources`) — and kept out, while the rest of the response applies.

When the stream fails (control plane down, restarted, unreachable) the state is left as it was:
the data path keeps serving the last accepted snapshot. The client retries with exponential
backoff and jitter, moving to the next address each time, and on reconnect sends
`initial_resource_versions` so that it receives only the difference. The control plane's
certificate is checked against the node's trust bundle and its DNS name, as the CA client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, struct_pb2
from google.rpc import code_pb2, status_pb2

from control.api import mesh_pb2
from control.backoff import Backoff
from control.ca.node_credentials import NODE_BUNDLE, NODE_CERT, NODE_KEY
from control.ca.spiffe_id import CONTROL_DNS_NAMES
from control.xds.resources import SHORT_NAMES, ResourceError, decode
from node_agent.xds.state import XdsState

log = logging.getLogger("lacewing.xds.client")

DEFAULT_BACKOFF = Backoff(initial=0.2, maximum=10.0)


class XdsClient:
    def __init__(self, *, addresses: Sequence[str], credentials: str | Path, node: str,
                 state: XdsState, role: str = "node", waypoint: str = "",
                 backoff: Backoff = DEFAULT_BACKOFF, rand: Callable[[], float] = random.random,
                 server_name: str = CONTROL_DNS_NAMES[0]) -> None:
        if not addresses:
            raise ValueError("at least one control plane address is needed")
        self.addresses = list(addresses)
        self.credentials = Path(credentials)
        self.node = node
        self.state = state
        self.role = role
        self.waypoint = waypoint
        self.backoff = backoff
        self.rand = rand
        self.server_name = server_name
        self.connected_to: str | None = None
        self.connects = 0
        self.failures = 0          # consecutive, reset by a response
        self.last_error: str | None = None
        self.rejected: dict[tuple[str, str], str] = {}  # (type, name) -> reason, last NACK
        self.bytes_received = 0
        self.responses = 0
        self.synced = asyncio.Event()  # every subscribed type answered on the current stream
        self._answered: set[str] = set()

    # --- one stream -----------------------------------------------------------------------------
    def _channel(self, address: str) -> grpc.aio.Channel:
        d = self.credentials
        creds = grpc.ssl_channel_credentials(
            root_certificates=(d / NODE_BUNDLE).read_bytes(),
            private_key=(d / NODE_KEY).read_bytes(),
            certificate_chain=(d / NODE_CERT).read_bytes())
        return grpc.aio.secure_channel(address, creds, options=[
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.default_authority", self.server_name),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # A control plane that vanished without closing (partition, frozen VM) is noticed
            # within ~40 s, and the client moves on to the next replica.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ])

    def _node_proto(self) -> base_pb2.Node:
        meta = struct_pb2.Struct()
        meta.update({"role": self.role, **({"waypoint": self.waypoint} if self.waypoint else {})})
        ident = f"{self.role}~{self.node}" + (f"~{self.waypoint}" if self.waypoint else "")
        return base_pb2.Node(id=ident, cluster=self.node, metadata=meta)

    def handle(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
        """Apply one response (sans-IO apart from the state); the ACK or NACK to send back."""
        self.responses += 1
        self.bytes_received += resp.ByteSize()
        type_url = resp.type_url
        upserts, rejected = {}, []
        for res in resp.resources:
            try:
                upserts[res.name] = (res.version, decode(type_url, res.resource))
            except ResourceError as exc:
                rejected.append(mesh_pb2.RejectedResources.Rejected(
                    name=res.name, version=res.version, reason=str(exc)))
        self.state.apply(type_url, upserts, list(resp.removed_resources),
                         system_version=resp.system_version_info)
        for key in [k for k in self.rejected if k[0] == type_url and
                    (k[1] in upserts or k[1] in resp.removed_resources)]:
            del self.rejected[key]
        self._answered.add(type_url)
        if self._answered >= set(self.state.type_urls):
            self.synced.set()
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
        if rejected:
            for rej in rejected:
                self.rejected[(type_url, rej.name)] = rej.reason
                log.warning("rejected %s %s (version %s): %s", SHORT_NAMES.get(type_url, type_url),
                            rej.name, rej.version, rej.reason)
            detail = any_pb2.Any()
            detail.Pack(mesh_pb2.RejectedResources(resources=rejected))
            ack.error_detail.CopyFrom(status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT,
                message=f"{len(rejected)} of {len(resp.resources)} resources rejected: "
                        + "; ".join(f"{r.name}: {r.reason}" for r in rejected[:5]),
                details=[detail]))
        return ack

    async def _stream(self, address: str) -> None:
        channel = self._channel(address)
        try:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.DeltaAggregatedResources()
            node = self._node_proto()
            for type_url in self.state.type_urls:
                await call.write(discovery_pb2.DeltaDiscoveryRequest(
                    node=node, type_url=type_url,
                    initial_resource_versions=self.state.versions(type_url)))
            self._answered.clear()
            self.synced.clear()
            while True:
                resp = await call.read()
                if resp is grpc.aio.EOF:
                    raise ConnectionError("the control plane closed the stream")
                if self.connected_to != address:
                    self.connected_to = address
                    self.connects += 1
                    log.info("xDS stream to %s up (connection %d)", address, self.connects)
                self.failures = 0
                self.last_error = None
                await call.write(self.handle(resp))
        finally:
            self.connected_to = None
            await channel.close(grace=None)

    # --- forever --------------------------------------------------------------------------------
    async def run(self) -> None:
        i = 0
        while True:
            address = self.addresses[i % len(self.addresses)]
            i += 1
            try:
                await self._stream(address)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self.last_error = f"{address}: {exc.code().name}: {exc.details()}"
            except (ConnectionError, OSError) as exc:
                self.last_error = f"{address}: {exc}"
            except Exception as exc:  # noqa: BLE001 - never give up on the control plane
                log.exception("xDS stream to %s broke", address)
                self.last_error = f"{address}: {type(exc).__name__}: {exc}"
            self.failures += 1
            delay = self.backoff.delay(self.failures, rand=self.rand)
            log.warning("xDS stream failed (%s); keeping snapshot %s, retrying in %.2fs",
                        self.last_error, self.state.snapshot.version or "(none)", delay)
            await asyncio.sleep(delay)

    def describe(self) -> dict:
        return {"addresses": self.addresses, "connectedTo": self.connected_to,
                "connects": self.connects, "failures": self.failures,
                "lastError": self.last_error, "responses": self.responses,
                "bytesReceived": self.bytes_received,
                "rejected": [{"type": SHORT_NAMES.get(t, t), "name": n, "reason": why}
                             for (t, n), why in sorted(self.rejected.items())]}


@contextlib.asynccontextmanager
async def running(client: XdsClient):
    """Run a client in a task for the duration of a block (tests, tools)."""
    task = asyncio.create_task(client.run(), name=f"xds:{client.node}")
    try:
        yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["XdsClient", "running"]
