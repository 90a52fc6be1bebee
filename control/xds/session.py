"""The delta xDS protocol of one client stream, sans-IO: requests and catalog changes in,
responses out.

Before: the server (control/xds/server.py) accepted a DeltaAggregatedResources stream from an
authenticated node agent or waypoint. After: for every `DeltaDiscoveryRequest` it calls
`on_request`, for every catalog change `on_change`; both return the `DeltaDiscoveryResponse`s to
send. No sockets, no clock of its own (`now` is passed in), so every rule is tested directly.

The rules (Envoy's incremental xDS, wildcard subscriptions):
- the first request of a type subscribes to it; its `initial_resource_versions` say what the
  client already holds (a reconnect, possibly to another replica: versions are content hashes,
  the same on every replica), and the answer holds only the difference — changed or new resources
  and `removed_resources` for names the client has that no longer exist. An answer is sent even
  when empty, so the client knows it is in sync;
- later changes send only the changed names of the types the client subscribed to;
- a request with `response_nonce` ACKs that response, or NACKs it when `error_detail` is set;
  a NACK's details (`lacewing.mesh.v1.RejectedResources`) name the rejected resources: those
  are recorded with their reason and not sent again until their version changes; the rest of
  the response counts as accepted. A NACK without details rejects the whole response;
- what the client holds is tracked optimistically (as sent), so responses may be pipelined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from control.api import mesh_pb2
from control.catalog import NODES, WAYPOINTS, Catalog, Change
from control.xds.resources import SHORT_NAMES

NODE, WAYPOINT = "node", "waypoint"
MAX_PENDING = 256


@dataclass(frozen=True)
class Rejection:
    type_url: str
    name: str
    version: str
    reason: str
    at: float


@dataclass
class _Sent:
    names: dict[str, str | None]  # name -> version sent (None: removed)
    system_version: str
    started_at: float | None       # earliest change it carries (monotonic), for convergence
    sent_at: float


@dataclass
class _TypeState:
    known: dict[str, str] = field(default_factory=dict)      # name -> version the client holds
    rejected: dict[str, Rejection] = field(default_factory=dict)
    pending: dict[str, _Sent] = field(default_factory=dict)  # nonce -> what it carried
    acked_version: str = ""
    nacks: int = 0


@dataclass(frozen=True)
class Ack:
    """What an ACK/NACK told us, for metrics: convergence time and rejects."""

    type_url: str
    accepted: bool
    convergence: float | None  # seconds from the change to this ACK, if it carried one
    rejected: tuple[Rejection, ...] = ()


class DeltaSession:
    def __init__(self, *, role: str, waypoint: str = "") -> None:
        self.role = role
        self.waypoint = waypoint
        self.audience = NODES if role == NODE else WAYPOINTS
        self.types: dict[str, _TypeState] = {}
        self._nonce = 0
        self.pushes = 0
        self.bytes_sent = 0
        self.last_push: float | None = None
        self.last_ack: float | None = None
        self.acks: list[Ack] = []  # drained by the server after each call
        self.sizes: dict[str, int] = {}  # nonce -> bytes, taken by the server for its metrics
        self.computed_version = ""  # catalog version up to which responses were computed
        self.acked_version = ""     # catalog version the client has confirmed holding all of

    def _pending(self) -> bool:
        return any(st.pending for st in self.types.values())

    def _settle(self) -> None:
        if not self._pending() and self.types:
            self.acked_version = self.computed_version

    # --- helpers --------------------------------------------------------------------------------
    def _visible(self, catalog: Catalog, type_url: str) -> dict:
        return {n: e for n, e in catalog.entries.get(type_url, {}).items()
                if e.seen_by(self.audience, self.waypoint)}

    def _response(self, catalog: Catalog, type_url: str, names, *, now: float,
                  started_at: float | None, full: bool) -> discovery_pb2.DeltaDiscoveryResponse | None:
        st = self.types[type_url]
        entries = catalog.entries.get(type_url, {})
        resources, removed, sent = [], [], {}
        for name in sorted(names):
            entry = entries.get(name)
            if entry is not None and not entry.seen_by(self.audience, self.waypoint):
                entry = None
            if entry is None:
                if name in st.known:
                    removed.append(name)
                    sent[name] = None
                st.rejected.pop(name, None)
                continue
            version = entry.packed.version
            if st.known.get(name) == version:
                continue
            rej = st.rejected.get(name)
            if rej is not None:
                if rej.version == version:
                    continue  # still the rejected version: keep it out
                del st.rejected[name]
            resources.append(entry.packed.resource)
            sent[name] = version
        if not resources and not removed and not full:
            return None
        self._nonce += 1
        nonce = str(self._nonce)
        resp = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=catalog.version_info, type_url=type_url, nonce=nonce,
            resources=resources, removed_resources=removed)
        for name, version in sent.items():
            if version is None:
                st.known.pop(name, None)
            else:
                st.known[name] = version
        st.pending[nonce] = _Sent(sent, catalog.version_info, started_at, now)
        if len(st.pending) > MAX_PENDING:  # a client that never ACKs: forget the oldest
            st.pending.pop(next(iter(st.pending)))
        size = resp.ByteSize()
        self.sizes[nonce] = size
        self.pushes += 1
        self.bytes_sent += size
        self.last_push = now
        return resp

    # --- events ---------------------------------------------------------------------------------
    def on_request(self, req: discovery_pb2.DeltaDiscoveryRequest, catalog: Catalog, *,
                   now: float) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        type_url = req.type_url
        out = []
        if req.response_nonce:
            st = self.types.get(type_url)
            if st is not None:
                self._on_ack(type_url, st, req, now=now)
            return out
        if type_url not in self.types:
            st = self.types[type_url] = _TypeState(known=dict(req.initial_resource_versions))
            if catalog.ready:
                names = set(self._visible(catalog, type_url)) | set(st.known)
                resp = self._response(catalog, type_url, names, now=now, started_at=None,
                                      full=True)
                if resp is not None:
                    out.append(resp)
                self.computed_version = catalog.version_info
        return out

    def on_ready(self, catalog: Catalog, *, now: float) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """The catalog became ready (answer the subscriptions held until then), or the server
        skipped changes for this client: send every type's difference to what it holds."""
        out = []
        for type_url, st in self.types.items():
            names = set(self._visible(catalog, type_url)) | set(st.known)
            resp = self._response(catalog, type_url, names, now=now, started_at=None, full=True)
            if resp is not None:
                out.append(resp)
        self.computed_version = catalog.version_info
        return out

    def on_change(self, change: Change, catalog: Catalog, *,
                  now: float) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        if not catalog.ready:
            return []
        out = []
        for type_url, names in change.changed.items():
            if type_url not in self.types:
                continue
            resp = self._response(catalog, type_url, names, now=now,
                                  started_at=change.started_at, full=False)
            if resp is not None:
                out.append(resp)
        if self.types:
            self.computed_version = catalog.version_info
            self._settle()
        return out

    def _on_ack(self, type_url: str, st: _TypeState, req, *, now: float) -> None:
        sent = st.pending.pop(req.response_nonce, None)
        self.last_ack = now
        if sent is None:
            return  # a nonce we no longer track (stale); nothing to learn
        self._settle()
        convergence = (now - sent.started_at) if sent.started_at is not None else None
        if not req.HasField("error_detail") or req.error_detail.code == 0:
            st.acked_version = sent.system_version
            self.acks.append(Ack(type_url, True, convergence))
            return
        st.nacks += 1
        named = _rejected_names(req.error_detail)
        rejections = []
        if not named:  # the whole response was refused
            named = {n: (v, req.error_detail.message) for n, v in sent.names.items() if v}
        for name, (version, reason) in named.items():
            version = version or sent.names.get(name) or ""
            rej = Rejection(type_url, name, version, reason or req.error_detail.message, now)
            st.rejected[name] = rej
            # The client kept whatever it had before: a version we do not know ("" matches none),
            # so any later change, and a removal, is sent.
            st.known[name] = ""
            rejections.append(rej)
        st.acked_version = sent.system_version
        self.acks.append(Ack(type_url, False, convergence, tuple(rejections)))

    # --- views ----------------------------------------------------------------------------------
    def rejections(self) -> list[Rejection]:
        return [rej for st in self.types.values() for rej in st.rejected.values()]

    def describe(self) -> dict:
        return {
            "types": {SHORT_NAMES.get(t, t): {"resources": len(st.known),
                                              "ackedVersion": st.acked_version,
                                              "pending": len(st.pending), "nacks": st.nacks}
                      for t, st in sorted(self.types.items())},
            "ackedVersion": self.acked_version, "inSync": not self._pending() and bool(self.types),
            "pushes": self.pushes, "bytesSent": self.bytes_sent,
            "rejects": [{"type": SHORT_NAMES.get(r.type_url, r.type_url), "name": r.name,
                         "version": r.version, "reason": r.reason} for r in self.rejections()],
        }


def _rejected_names(status: status_pb2.Status) -> dict[str, tuple[str, str]]:
    out = {}
    for detail in status.details:
        msg = mesh_pb2.RejectedResources()
        if detail.Unpack(msg):
            for item in msg.resources:
                out[item.name] = (item.version, item.reason)
    return out
