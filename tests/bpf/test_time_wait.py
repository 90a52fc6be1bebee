"""A pod reusing a source port meets the tunnel's TIME_WAIT socket of that tuple (NOTES.md gap 0).

The relay (standing in for the tunnel) closes first — the server answers "who" and closes, the
relay passes the FIN on — so its accepted socket (local = the original destination, peer = the
pod's address and port) lingers in TIME_WAIT in the node's namespace. A new connection from the
same pod port to the same destination must be captured again at once: the tc program marks the
SYN and records it, the kernel's TIME_WAIT handling asks for a listener, and the sk_lookup
program hands it the registered listener. Before the fix, that SYN was dropped and the client
retried a second later.

Same topology as test_capture.py (node1: pods A-D, node2: pod E; every pod serves "who").
"""

from __future__ import annotations

import socket
import time

import pytest

from node_agent.bpf import listeners
from tests.bpf.conftest import _pod
from tests.bpf.netapps import ask_who
from tests.bpf.topology import in_netns, sh

pytestmark = [pytest.mark.netns, pytest.mark.bpf]

# a SYN that is dropped is retransmitted after 1 s: a connect bounded well below that fails
# unless the first SYN was taken
FIRST_SYN_ONLY = 0.8


def pods(topo):
    a, b, c, d = topo.nodes[0].pods
    (e,) = topo.nodes[1].pods
    return a, b, c, d, e


def in_time_wait(node_ns: str, local: tuple[str, int], peer: tuple[str, int]) -> bool:
    out = sh("ip", "netns", "exec", node_ns, "ss", "-Htn", "state", "time-wait")
    want = [f"{local[0]}:{local[1]}", f"{peer[0]}:{peer[1]}"]
    return any(line.split()[-2:] == want for line in out.splitlines())


def wait_time_wait(node_ns: str, local: tuple[str, int], peer: tuple[str, int]) -> None:
    """Until the relay's socket of this tuple is in TIME_WAIT (bounded wait)."""
    deadline = time.monotonic() + 5
    while not in_time_wait(node_ns, local, peer):
        assert time.monotonic() < deadline, f"no TIME_WAIT socket {local} <- {peer}"
        time.sleep(0.02)


def who_from_port(ns: str, ip: str, port: int, *, sport: int, timeout: float) -> str:
    """Ask "who" from namespace ns with a fixed source port."""
    def dial():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
        except OSError:
            s.close()
            raise
        return s

    with in_netns(ns, dial) as s:
        s.settimeout(5)
        s.sendall(b"who\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode().strip()


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def reuse_after_time_wait(topo, dp, relay, client, server, listener: int) -> dict:
    """Connect client -> server:8080 through the relay, wait for the relay's TIME_WAIT, connect
    again from the same port: that must be captured at once. Returns the counters' changes."""
    node_ns = topo.nodes[0].name
    relay.drain()
    _seen, mine = ask_who(client.name, server.ip, 8080)
    assert relay.next()["listener"] == listener
    wait_time_wait(node_ns, (server.ip, 8080), (client.ip, mine[1]))
    before = dp.stats()
    seen = who_from_port(client.name, server.ip, 8080, sport=mine[1], timeout=FIRST_SYN_ONLY)
    got = relay.next()
    after = dp.stats()
    assert got == {"listener": listener, "local": [server.ip, 8080],
                   "peer": [client.ip, mine[1]]}
    assert seen.split(":")[0] != client.ip          # the relay dialed on from the node
    return delta(before, after)


def test_enrolled_pod_reusing_its_port_is_captured_at_once(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    dp.enroll(_pod(a))
    try:
        d_ = reuse_after_time_wait(topo, dp, relay, a, d, 15001)
    finally:
        dp.leave(_pod(a))
    assert d_["time_wait_syn"] == 1 and d_["time_wait_listener_assigned"] == 1
    assert d_["captured_outbound"] == 1
    assert d_["dropped_no_listener"] == d_["assign_failed"] == 0
    assert d_["time_wait_unregistered"] == d_["time_wait_listener_refused"] == 0


def test_plaintext_client_reusing_its_port_is_captured_at_once(topo, dp, relay, servers):
    _a, b, c, _d, _e = pods(topo)
    dp.enroll(_pod(b))
    try:
        d_ = reuse_after_time_wait(topo, dp, relay, c, b, 15006)
    finally:
        dp.leave(_pod(b))
    assert d_["time_wait_syn"] == 1 and d_["time_wait_listener_assigned"] == 1
    assert d_["captured_inbound"] == 1
    assert d_["dropped_no_listener"] == d_["assign_failed"] == 0


def test_the_reused_connection_is_counted_like_any_capture(topo, dp, relay, servers):
    """The sockops note is left for the hand-over too: the second connection has its record."""
    a, _b, _c, d, _e = pods(topo)
    dp.enroll(_pod(a))
    try:
        dp.l4_totals()
        before = dp.l4_totals().get((a.ip, d.ip, "outbound"))
        opened = before.opened if before else 0
        reuse_after_time_wait(topo, dp, relay, a, d, 15001)
        deadline = time.monotonic() + 5
        while dp.l4_totals()[(a.ip, d.ip, "outbound")].opened < opened + 2:
            assert time.monotonic() < deadline, dp.read_flows()
            time.sleep(0.05)
    finally:
        dp.leave(_pod(a))


def test_without_registered_listeners_such_a_syn_is_dropped_and_counted(topo, dp, relay, servers):
    """A tunnel that never registered its listeners gets the old behaviour: the SYN is dropped
    (the client retries later), counted as `time_wait_unregistered`."""
    a, _b, _c, d, _e = pods(topo)
    node_ns = topo.nodes[0].name
    map_path = f"{dp.pin_dir}/lw_listeners"
    assert set(dp.registered_listeners()) == {"outbound", "inbound"}
    dp.enroll(_pod(a))
    try:
        listeners.unregister(map_path)
        assert dp.registered_listeners() == {}
        relay.drain()
        _seen, mine = ask_who(a.name, d.ip, 8080)
        relay.next()
        wait_time_wait(node_ns, (d.ip, 8080), (a.ip, mine[1]))
        before = dp.stats()
        with pytest.raises(OSError):
            who_from_port(a.name, d.ip, 8080, sport=mine[1], timeout=FIRST_SYN_ONLY)
        d_ = delta(before, dp.stats())
        assert d_["time_wait_unregistered"] >= 1 and d_["time_wait_syn"] == 0
        assert d_["time_wait_listener_assigned"] == 0
    finally:
        relay.register(map_path)
        dp.leave(_pod(a))
    assert set(dp.registered_listeners()) == {"outbound", "inbound"}


def test_a_closed_listener_leaves_the_map_and_a_restarted_one_takes_its_slot(topo, dp, relay):
    map_path = f"{dp.pin_dir}/lw_listeners"

    def listening():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, 19, 1)      # IP_TRANSPARENT
        s.bind(("0.0.0.0", 0))
        s.listen(8)
        return s

    node_ns = topo.nodes[0].name
    first = in_netns(node_ns, listening)
    try:
        dp.register_listeners({"tunnel": first})
        cookie = dp.registered_listeners()["tunnel"]
        second = in_netns(node_ns, listening)
        try:
            dp.register_listeners({"tunnel": second.fileno()})
            assert dp.registered_listeners()["tunnel"] != cookie
            second.close()
            assert "tunnel" not in dp.registered_listeners()   # the kernel removed it
        finally:
            second.close()
        with pytest.raises(ValueError, match="unknown listener kinds"):
            dp.register_listeners({"sideways": first})
        plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)      # not listening
        try:
            with pytest.raises(OSError, match="cannot register the outbound listener"):
                listeners.register(map_path, {"outbound": plain})
        finally:
            plain.close()
    finally:
        first.close()
    assert set(dp.registered_listeners()) == {"outbound", "inbound"}
