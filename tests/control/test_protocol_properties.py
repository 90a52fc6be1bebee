"""Property: whatever sequence of changes, reconnects and rejected resources, a client driven by
`DeltaSession` ends up holding exactly the control plane's resources — except rejected versions,
for which it keeps what it had — and a reconnect sends only what differs. Sans-IO: the server
session and the client's `handle` + state are wired directly, no sockets."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from control.api import mesh_pb2
from control.catalog import Catalog, Entry
from control.snapshot import Workload
from control.xds import resources as r
from control.xds.resources import Packed
from control.xds.session import DeltaSession
from node_agent.xds.client import XdsClient
from node_agent.xds.state import XdsState

NAMES = [f"ns/w{i}" for i in range(5)]


def workload(i: int, value: int) -> Workload:
    return Workload(namespace="ns", name=f"w{i}", node="n1", ip=f"10.0.{value}.{i + 1}",
                    node_ip="", service_account="sa", identity="spiffe://cluster.local/ns/ns/sa/sa")


def bad_entry(i: int, value: int) -> Entry:
    payload = mesh_pb2.Workload(namespace="ns", name=f"w{i}", node=str(value)).SerializeToString()
    return Entry(Packed(r.WORKLOAD, f"ns/w{i}", f"bad{value}", payload), None)


ops = st.lists(st.one_of(
    st.tuples(st.just("set"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("bad"), st.integers(0, 4), st.integers(0, 3)),
    st.tuples(st.just("del"), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("reconnect"), st.just(0), st.just(0)),
), max_size=25)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_client_converges_to_the_catalog(sequence):
    catalog = Catalog()
    catalog.mark_ready()
    state = XdsState(build=lambda prev, t, objs, v, by_type: dict(by_type.get(r.WORKLOAD, {})),
                     type_urls=(r.WORKLOAD,))
    client = XdsClient(addresses=["127.0.0.1:1"], credentials="/nonexistent", node="n1",
                       state=state)
    expected: dict[str, Workload] = {}  # what the client must hold

    def deliver(responses, session):
        sent = 0
        while responses:
            resp = responses.pop(0)
            sent += len(resp.resources)
            ack = client.handle(resp)
            responses += session.on_request(ack, catalog, now=0)
        return sent

    session = DeltaSession(role="node")
    deliver(session.on_request(discovery_pb2.DeltaDiscoveryRequest(type_url=r.WORKLOAD),
                               catalog, now=0), session)
    catalog.listeners.append(lambda ch: pending.extend(session.on_change(ch, catalog, now=0)))
    pending: list = []
    for op, i, value in sequence:
        name = NAMES[i]
        if op == "set":
            w = workload(i, value)
            catalog.apply({(r.WORKLOAD, name): Entry(r.pack(w), w)}, set())
            expected[name] = w
        elif op == "bad":
            catalog.apply({(r.WORKLOAD, name): bad_entry(i, value)}, set())
            # the client keeps what it had (or nothing)
        elif op == "del":
            catalog.apply({}, {(r.WORKLOAD, name)})
            expected.pop(name, None)
        else:  # reconnect: a new session, the client says what it holds
            catalog.listeners.clear()
            session = DeltaSession(role="node")
            catalog.listeners.append(lambda ch, s=session: pending.extend(
                s.on_change(ch, catalog, now=0)))
            req = discovery_pb2.DeltaDiscoveryRequest(
                type_url=r.WORKLOAD, initial_resource_versions=state.versions(r.WORKLOAD))
            good = {n for n, e in catalog.entries[r.WORKLOAD].items() if e.obj is not None}
            held = state.versions(r.WORKLOAD)
            differing = {n for n in good
                         if held.get(n) != catalog.entries[r.WORKLOAD][n].packed.version}
            sent = deliver(session.on_request(req, catalog, now=0), session)
            bad_now = {n for n, e in catalog.entries[r.WORKLOAD].items() if e.obj is None}
            assert sent <= len(differing) + len(bad_now)  # only the difference travels
            continue
        batch, pending[:] = list(pending), []
        deliver(batch, session)
        assert dict(state.snapshot) == expected
    assert dict(state.snapshot) == expected
    # Every currently-bad resource the client was sent is reported as rejected.
    for n, e in catalog.entries[r.WORKLOAD].items():
        if e.obj is None and (r.WORKLOAD, n) in client.rejected:
            assert any(rej.name == n for rej in session.rejections())
