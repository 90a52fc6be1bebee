"""The node agent's data path: the node tunnel, and the eBPF capture that feeds it, following the
agent's snapshots.

Before: a `node_agent.agent.NodeAgent` (its hooks: `subscribe(fn)`, `registry`, `on_start`,
`on_stop`, and `certs`). After `attach(agent)`:
- the tunnel (`proxy.Tunnel`) runs on its own thread with its own event loop (uvloop when
  installed), so the hot path never waits behind xDS or certificate work and the agent's loop
  stays the default one grpc.aio expects; it reads certificates through the agent's
  `CertificateManager` (calls are handed to the agent's loop) and registers its metrics in the
  agent's registry; readiness stays the agent's (:15021);
- every applied snapshot goes to the tunnel first (latest wins, one writer), then to the
  datapath: `Datapath.sync` enrolls the node's enrolled pods and makes the others plaintext-
  captured, so the tunnel already knows a pod when its first SYN is captured; then
  `Datapath.set_services` with the Service VIPs that have an enrolled endpoint on this node
  (`state.service_capture`), which unenrolled pods' connections must not reach through DNAT.
  The datapath is installed with the first snapshot that enrolls a pod of this node (a node
  with no mesh pod never loads eBPF programs); each time it is installed or adopted, the tunnel's listening
  sockets are registered with it (`Datapath.register_listeners`), which the capture needs for a
  pod that reuses a source port while the tunnel's side of the old connection is in TIME_WAIT;
- on stop the tunnel drains; the capture stays in the kernel, so that a restarting agent adopts
  it without a gap (fail closed: captured SYNs find no listener and are dropped meanwhile);
- once the datapath is there, the tunnel's telemetry reads its byte counts from the kernel's
  per-connection records (`Datapath.flow_reader()`, injected as `Telemetry.flows`), and a
  reaper here deletes records of closed connections nobody consumed (`REAP_EVERY`);
- at the same pace, Service VIPs kept draining for connections that were open when the VIP
  stopped qualifying are retired once those connections have closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Callable

from control.snapshot import NodeSnapshot, Workload
from node_agent.certs.manager import WorkloadCertificate
from node_agent.ztunnel.proxy import Tunnel, TunnelConfig
from node_agent.ztunnel.state import service_capture
from node_agent.ztunnel.telemetry import Telemetry

log = logging.getLogger("lacewing.ztunnel.wiring")
REAP_EVERY = 5.0        # s between sweeps of lw_flows for records nobody consumed
REAP_AFTER = 15.0       # s a closed connection's record is left for the tunnel's final read
                        # (it reads within FINAL_WAIT of its own close; refused connections
                        # are never read, and must not fill the map under a flood)


class _AgentCerts:
    """`CertSource` for a tunnel on another loop: each `get` runs on the agent's loop."""

    def __init__(self, certs, loop: asyncio.AbstractEventLoop) -> None:
        self._certs = certs
        self._loop = loop

    async def get(self, identity: str) -> WorkloadCertificate:
        fut = asyncio.run_coroutine_threadsafe(self._certs.get(identity), self._loop)
        return await asyncio.wrap_future(fut)


def veth_by_route(workload: Workload) -> str:
    """The host-side interface of a pod: the one the node routes the pod's address through
    (`ip route get <pod IP>`), whatever the CNI named it."""
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        routes = ipr.route("get", dst=workload.ip)
        if not routes:
            raise LookupError(f"no route to pod {workload.uid} ({workload.ip}) on this node")
        index = routes[0].get_attr("RTA_OIF")
        link = ipr.get_links(index)[0]
        return link.get_attr("IFLA_IFNAME")


class Dataplane:
    def __init__(self, agent, *, config: TunnelConfig | None = None, capture: bool = True,
                 veth_of: Callable[[Workload], str] | None = None,
                 access_log=sys.stderr, use_uvloop: bool = True) -> None:
        self.agent = agent
        self.config = config or TunnelConfig(readiness_addr=None)
        self.capture = capture
        self.veth_of = veth_of or veth_by_route
        self.telemetry = Telemetry(registry=agent.registry, access_log=access_log)
        self.use_uvloop = use_uvloop
        self.tunnel: Tunnel | None = None
        self.datapath = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._latest: NodeSnapshot | None = None
        self._applying: asyncio.Task | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._readers: list = []            # FlowReaders handed to the telemetry (closed at stop)
        self._reaper: asyncio.Task | None = None
        self._datapath_turn = asyncio.Lock()   # `_sync` and the VIP retirement take turns

    # ------------------------------------------------------------------ the tunnel's thread
    def _run(self, agent_loop: asyncio.AbstractEventLoop) -> None:
        if self.use_uvloop:
            try:
                import uvloop
                loop = uvloop.new_event_loop()
            except ImportError:
                loop = asyncio.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self.tunnel = Tunnel(_AgentCerts(self.agent.certs, agent_loop), config=self.config,
                             telemetry=self.telemetry)
        try:
            loop.run_until_complete(self.tunnel.start())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.tunnel.close())
            loop.close()

    def _in_tunnel(self, coro):
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def start(self) -> None:
        agent_loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(agent_loop,),
                                        name="lacewing-tunnel", daemon=True)
        self._thread.start()
        await agent_loop.run_in_executor(None, self._started.wait)
        if self._error is not None:
            raise RuntimeError(f"the node tunnel did not start: {self._error}") from self._error
        log.info("node tunnel listening on %s", self.tunnel.addresses)
        tunnel = self.tunnel
        self.agent.readiness["tunnel"] = lambda: tunnel.ready
        self._reaper = agent_loop.create_task(self._reap_flows())
        if self._latest is not None:
            self._kick()

    async def stop(self) -> None:
        if self._applying is not None:
            self._applying.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._applying
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reaper
        if self._loop is not None and self.tunnel is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._in_tunnel(self.tunnel.drain(timeout=5.0)), 10)
            self._loop.call_soon_threadsafe(self.telemetry.finish)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
        self.telemetry.flows = None
        for reader in self._readers:
            reader.close()
        self._readers.clear()
        if self.datapath is not None:
            self.datapath.close()

    # ------------------------------------------------------------------ snapshots
    def on_snapshot(self, snapshot: NodeSnapshot) -> None:
        self._latest = snapshot
        if self.tunnel is not None:
            self._kick()

    def _kick(self) -> None:
        if self._applying is None or self._applying.done():
            self._applying = asyncio.get_running_loop().create_task(self._apply_latest())

    async def _apply_latest(self) -> None:
        while self._latest is not None:
            snap, self._latest = self._latest, None
            try:
                await self._in_tunnel(self.tunnel.update(snap))
                if self.capture:
                    async with self._datapath_turn:
                        await asyncio.get_running_loop().run_in_executor(None, self._sync, snap)
            except Exception:  # noqa: BLE001 - keep following snapshots
                log.exception("applying snapshot %s to the data path failed", snap.version)

    # Tunnel listener -> datapath slot (node_agent.bpf.layout.LISTENER_SLOTS)
    LISTENER_SLOTS = {"outbound": "outbound", "inbound_plaintext": "inbound",
                      "inbound": "tunnel"}

    def _register_listeners(self, dp) -> None:
        """Put the tunnel's listening sockets in the datapath's listener map, so that a
        captured SYN meeting the tunnel's own TIME_WAIT socket of its tuple (a pod reusing a
        source port within 60 s) is handed to them instead of dropped (docs/datapath.md)."""
        from node_agent.datapath import DatapathError
        fds = self.tunnel.listening_fds() if self.tunnel is not None else {}
        socks = {slot: fds[name] for name, slot in self.LISTENER_SLOTS.items() if name in fds}
        try:
            dp.register_listeners(socks)
        except (DatapathError, OSError) as exc:
            log.warning("tunnel listeners not registered with the datapath (a pod reusing a "
                        "port within 60 s waits for a SYN retry): %s", exc)
            return
        log.info("tunnel listeners registered with the datapath: %s", sorted(socks))

    def _sync(self, snap: NodeSnapshot) -> None:
        from node_agent.datapath import Datapath, Pod
        local = [w for w in snap.local_workloads() if w.ip]
        if self.datapath is not None and not self.datapath.pinned():
            self.telemetry.flows = None     # (its reader is closed at stop: the tunnel's
            self.datapath.close()           # thread may be reading it right now)
            self.datapath = None            # removed from outside (an operator's uninstall)
        if self.datapath is None:
            if not any(w.enrolled for w in local):
                return
            dp = Datapath(self.agent.cluster, self.agent.node)
            if dp.pinned():
                dp.adopt()
            else:
                dp.install()
            self.datapath = dp
            self._register_listeners(dp)
            self._attach_flow_reader(dp)
        pods = []
        for w in local:
            try:
                veth = self.veth_of(w)
            except (LookupError, OSError) as exc:
                log.warning("pod %s left out of this sync: %s", w.uid, exc)
                continue
            pods.append((Pod(ip=w.ip, veth=veth, name=w.uid,
                             exclude_outbound_ports=w.exclude_outbound_ports,
                             exclude_inbound_ports=w.exclude_inbound_ports), w.enrolled))
        self.datapath.sync(pods)
        # Service VIPs with an enrolled endpoint here: captured before the node's DNAT
        vips = service_capture(snap)
        self.datapath.set_services(vips=vips.vips, backends=vips.backends)

    # ------------------------------------------------------------------ kernel byte counts
    def _attach_flow_reader(self, dp) -> None:
        """From now on the tunnel's istio_tcp_*_bytes come from the kernel's records."""
        from node_agent.datapath import DatapathError
        try:
            reader = dp.flow_reader()
        except DatapathError as exc:
            log.warning("byte counts stay in user space: %s", exc)
            return
        self._readers.append(reader)
        self.telemetry.flows = reader
        log.info("tunnel byte counts from the kernel's per-connection records (lw_flows)")

    def _retire_drained_services(self) -> None:
        """Service VIPs that stopped qualifying stay in lw_vips while open connections use
        them (`Datapath.set_services`); once those have closed, the entries go. Runs in a
        worker thread like `_sync`, never beside it (`_datapath_turn`): lw_vips has one
        writer at a time."""
        from node_agent.datapath import DatapathError
        if self.datapath is None:
            return
        try:
            n = self.datapath.retire_drained_services()
        except (OSError, DatapathError) as exc:
            log.warning("retiring drained Service VIPs failed: %s", exc)
            return
        except Exception:  # noqa: BLE001 - the sweep goes on at the next turn
            log.exception("retiring drained Service VIPs failed")
            return
        if n:
            log.info("%d drained Service VIP entries retired (their last connection closed)", n)

    async def _reap_flows(self) -> None:
        """Delete records of connections that closed long ago and were never read to the end
        (refused connections, those of a previous agent): the tunnel consumes the rest."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(REAP_EVERY)
            async with self._datapath_turn:
                await loop.run_in_executor(None, self._retire_drained_services)
            reader = self.telemetry.flows
            if reader is None:
                continue
            try:
                n = await loop.run_in_executor(None, functools.partial(reader.reap,
                                                                     older_than=REAP_AFTER))
            except (OSError, ValueError) as exc:
                log.warning("reaping closed connection records failed: %s", exc)
                continue
            if n:
                log.debug("reaped %d closed connection records nobody read", n)


def attach(agent, **options) -> Dataplane:
    """Give `agent` its data path: subscribe to its snapshots, start and stop with it."""
    dp = Dataplane(agent, **options)
    agent.on_start.append(dp.start)
    agent.on_stop.append(dp.stop)
    agent.subscribe(dp.on_snapshot)
    return dp
