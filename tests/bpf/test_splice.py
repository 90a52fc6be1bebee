"""In-kernel byte counts stay exact when the tunnel splices a connection in the kernel
(sockmap + sk_skb redirect): the bytes never reach user space, and the counters still match.
"""

from __future__ import annotations

import pytest

from node_agent.datapath import Datapath, Pod
from tests.bpf.conftest import _require_root_and_bcc, teardown_datapath
from tests.bpf.netapps import Relay, Server, transfer
from tests.bpf.test_capture import closed_flow
from tests.bpf.topology import Topology

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def test_spliced_connection_is_counted_exactly():
    _require_root_and_bcc()
    t = Topology.new()
    servers, relay, dp = [], None, None
    try:
        t.build(pods_per_node=(2,))
        a, d = t.nodes[0].pods
        servers.append(Server(d.name, 8080))
        dp = Datapath(t.cluster, "node1", netns=t.nodes[0].name)
        dp.install()
        dp.enroll(Pod(ip=a.ip, veth=a.veth))
        relay = Relay(t.nodes[0].name, (15001,), sockmap=True)
        sent, reply = 6 * 1024 * 1024 + 7, 4 * 1024 * 1024 + 3
        got, mine = transfer(a.name, d.ip, 8080, send=sent, receive=reply, exact=True)
        assert got == reply
        assert relay.next()["listener"] == 15001
        copied = relay.next(timeout=10)["copied"]
        assert copied < (sent + reply) // 10       # nearly everything went through the kernel
        f = closed_flow(dp, a.ip, mine[1])
        assert not f.open
        assert (f.received_bytes, f.sent_bytes) == (sent, reply)
    finally:
        if relay is not None:
            relay.close()
        if dp is not None:
            dp.close()
        for s in servers:
            s.close()
        teardown_datapath(t.cluster, "node1", t.nodes[0].name if t.nodes else None)
        t.destroy()
