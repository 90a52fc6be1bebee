"""Capture end to end: real programs in the kernel, a namespaced node, a transparent relay.

node1 has pods A, B, C, D (10.244.1.2-5); node2 has pod E (10.244.2.2) and no datapath.
Every pod serves "who" on 8080, 9090 and 9091 (tests/bpf/netapps.py). A test that enrolls a
pod makes it leave again in `finally`, so the tests do not depend on their order.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time

import pytest

from node_agent.bpf import syscall
from node_agent.bpf.attach import cgroup2_root
from tests.bpf.conftest import _pod
from tests.bpf.netapps import Server, ask_who, connect, transfer
from tests.bpf.topology import in_netns, sh

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def closed_flow(dp, src: str, sport: int):
    """The flow record of one connection, once the relay's socket has closed (bounded wait)."""
    deadline = time.monotonic() + 10
    while True:
        flows = [f for f in dp.read_flows() if f.src == src and f.sport == sport]
        assert len(flows) == 1, dp.read_flows()
        if not flows[0].open or time.monotonic() > deadline:
            return flows[0]
        time.sleep(0.05)


def pods(topo):
    a, b, c, d = topo.nodes[0].pods
    (e,) = topo.nodes[1].pods
    return a, b, c, d, e


def test_enrolled_pod_reaches_outbound_listener_with_original_destination(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    relay.drain()
    dp.enroll(_pod(a))
    try:
        seen, mine = ask_who(a.name, d.ip, 8080)
        got = relay.next()
        assert got["listener"] == 15001
        assert got["local"] == [d.ip, 8080]          # the original destination, no NAT
        assert got["peer"] == [a.ip, mine[1]]        # the pod's own address and port
        # the relay connected on to D from the node, so D saw the node, not A
        assert seen.split(":")[0] != a.ip
    finally:
        dp.leave(_pod(a))


def test_plaintext_from_unenrolled_pod_reaches_inbound_listener(topo, dp, relay, servers):
    _a, b, c, _d, _e = pods(topo)
    relay.drain()
    dp.enroll(_pod(b))
    try:
        _seen, mine = ask_who(c.name, b.ip, 8080)
        got = relay.next()
        assert got["listener"] == 15006
        assert got["local"] == [b.ip, 8080]
        assert got["peer"] == [c.ip, mine[1]]
    finally:
        dp.leave(_pod(b))


def test_plaintext_from_another_node_reaches_inbound_listener(topo, dp, relay, servers):
    _a, b, _c, _d, e = pods(topo)
    relay.drain()
    dp.enroll(_pod(b))
    try:
        _seen, mine = ask_who(e.name, b.ip, 8080)
        got = relay.next()
        assert got["listener"] == 15006
        assert got["local"] == [b.ip, 8080]
        assert got["peer"] == [e.ip, mine[1]]
    finally:
        dp.leave(_pod(b))


def test_unenrolled_pods_and_the_node_itself_are_untouched(topo, dp, relay, servers):
    a, b, c, d, e = pods(topo)
    relay.drain()
    dp.enroll(_pod(b))
    try:
        seen, mine = ask_who(c.name, d.ip, 8080)           # unenrolled -> unenrolled
        assert seen == f"{c.ip}:{mine[1]}"
        seen, mine = ask_who(e.name, d.ip, 8080)           # other node -> unenrolled
        assert seen == f"{e.ip}:{mine[1]}"
        seen, mine = ask_who(topo.nodes[0].name, b.ip, 8080)   # the node's own -> enrolled
        assert seen == f"{mine[0]}:{mine[1]}"
        node_server = Server(topo.nodes[0].name, 8081)       # enrolled -> the node itself
        try:
            seen, mine = ask_who(b.name, topo.nodes[0].gateway, 8081)
            assert seen == f"{b.ip}:{mine[1]}"
        finally:
            node_server.close()
        assert relay.drain() == []
    finally:
        dp.leave(_pod(b))


def test_enroll_and_leave_live_without_breaking_existing_connections(topo, dp, relay, servers):
    _a, _b, c, d, _e = pods(topo)
    relay.drain()
    held = connect(c.name, d.ip, 8080)
    try:
        held.sendall(b"hold\n")
        held.sendall(b"x")
        assert held.recv(1) == b"k"
        dp.enroll(_pod(c))
        seen, _ = ask_who(c.name, d.ip, 8080)
        assert seen.split(":")[0] != c.ip
        assert relay.next()["listener"] == 15001
        held.sendall(b"y")                      # opened before enrolling: still direct, alive
        assert held.recv(1) == b"k"
        dp.leave(_pod(c))
        seen, mine = ask_who(c.name, d.ip, 8080)
        assert seen == f"{c.ip}:{mine[1]}"
        assert relay.drain() == []
    finally:
        held.close()
        dp.leave(_pod(c))


def test_port_exclusions_by_annotation(topo, dp, relay, servers):
    a, b, c, d, _e = pods(topo)
    relay.drain()
    dp.enroll(_pod(a, **{"lacewing.dev/exclude-outbound-ports": "9090"}))
    dp.enroll(_pod(b, **{"lacewing.dev/exclude-inbound-ports": "9091, 9090"}))
    try:
        seen, mine = ask_who(a.name, d.ip, 9090)      # excluded outbound: straight to D
        assert seen == f"{a.ip}:{mine[1]}"
        seen, mine = ask_who(c.name, b.ip, 9091)      # excluded inbound: straight to B
        assert seen == f"{c.ip}:{mine[1]}"
        assert relay.drain() == []
        ask_who(a.name, d.ip, 8080)                   # other ports still captured
        assert relay.next()["listener"] == 15001
        ask_who(c.name, b.ip, 8080)
        assert relay.next()["listener"] == 15006
        # A's excluded outbound port to enrolled B is plaintext for B: inbound capture,
        # unless B excludes that port too (it does: 9090)
        seen, mine = ask_who(a.name, b.ip, 9090)
        assert seen == f"{a.ip}:{mine[1]}"
        # changing the annotation takes effect live
        dp.enroll(_pod(a))
        ask_who(a.name, d.ip, 9090)
        assert relay.next()["listener"] == 15001
    finally:
        dp.leave(_pod(a))
        dp.leave(_pod(b))
    assert dp.enrolled() == {}


def test_in_kernel_byte_counts_equal_bytes_sent(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    from node_agent.bpf.flows import PairTotals

    before = dp.l4_totals().get((a.ip, d.ip, "outbound"), PairTotals())
    sent, reply = 5 * 1024 * 1024 + 12345, 3 * 1024 * 1024 + 321
    dp.enroll(_pod(a))
    try:
        got, mine = transfer(a.name, d.ip, 8080, send=sent, receive=reply)
        assert got == reply
        f = closed_flow(dp, a.ip, mine[1])
        assert (f.dst, f.dport, f.kind) == (d.ip, 8080, "outbound")
        assert not f.open
        assert f.received_bytes == sent
        assert f.sent_bytes == reply
        assert f.src_pod != 0 and f.dst_pod == 0          # D is not enrolled
        # totals are monotonic per (source, destination, kind): this connection adds exactly
        t = dp.l4_totals()[(a.ip, d.ip, "outbound")]
        assert (t.received_bytes - before.received_bytes, t.sent_bytes - before.sent_bytes,
                t.opened - before.opened) == (sent, reply, 1)
        # once counted, closed records leave the kernel map; the totals keep them
        assert all(r.open for r in dp.read_flows())
        again = dp.l4_totals()[(a.ip, d.ip, "outbound")]
        assert again.received_bytes == t.received_bytes
        named = dp.l4_by_workload({a.ip: "default/a", d.ip: "default/d"}.get)
        assert named[("default/a", "default/d", "source")].received_bytes == t.received_bytes
    finally:
        dp.leave(_pod(a))


def test_node_tunnel_port_is_never_sent_to_the_plaintext_listener(topo, dp, relay, servers):
    _a, b, _c, _d, e = pods(topo)
    relay.drain()
    dp.enroll(_pod(b))
    try:
        # nothing listens on 15008 in this test: the SYN passes to B itself, which refuses it
        with pytest.raises(ConnectionRefusedError):
            connect(e.name, b.ip, 15008, timeout=2)
        assert relay.drain() == []
    finally:
        dp.leave(_pod(b))


def test_install_enroll_and_leave_are_idempotent(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    node_ns = topo.nodes[0].name
    dp.install()
    dp.install()
    dp.enroll(_pod(a))
    first_id = dp.enroll(_pod(a))
    try:
        assert dp.enrolled() == {a.ip: {"pod_id": first_id, "ifindex": dp._ifindex(a.veth)}}
        filters = sh("tc", "-n", node_ns, "filter", "show", "dev", a.veth, "ingress")
        assert [ln for ln in filters.splitlines() if "handle" in ln] == [
            ln for ln in filters.splitlines() if "handle" in ln and "lw_pod_out" in ln]
        assert len([ln for ln in filters.splitlines() if "handle" in ln]) == 1
        rules = sh("ip", "-n", node_ns, "rule", "show")
        assert rules.count(f"lookup {0x4C57}") == 1
        relay.drain()
        ask_who(a.name, d.ip, 8080)
        assert relay.next()["listener"] == 15001
    finally:
        dp.leave(_pod(a))
        dp.leave(_pod(a))
    assert dp.enrolled() == {}
    filters = sh("tc", "-n", node_ns, "filter", "show", "dev", a.veth, "ingress")
    assert "lw_inbound" in filters and "lw_pod_out" not in filters


def test_stats_count_captures(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    before = dp.stats()
    dp.enroll(_pod(a))
    try:
        ask_who(a.name, d.ip, 8080)
        relay.next()
    finally:
        dp.leave(_pod(a))
    after = dp.stats()
    assert after["captured_outbound"] == before["captured_outbound"] + 1
    assert after["flows_opened"] >= before["flows_opened"] + 1


def test_reload_moves_every_attachment_to_the_new_programs_and_keeps_the_maps(topo, dp, relay,
                                                                               servers):
    a, _b, c, d, _e = pods(topo)
    node_ns = topo.nodes[0].name
    dp.enroll(_pod(a))
    try:
        held = connect(a.name, d.ip, 8080)               # captured before the reload
        held.sendall(b"hold\nx")
        assert held.recv(1) == b"k"
        before = dp.status()["programs"]
        dp.install(reload=True)
        after = dp.status()
        assert all(after["programs"][k] != before[k] for k in before)
        assert after["tc"][a.veth] == "lw_pod_out" and after["tc"][c.veth] == "lw_inbound"
        for dev in (a.veth, c.veth, "eth0"):
            out = sh("tc", "-n", node_ns, "filter", "show", "dev", dev, "ingress")
            ids = {int(x) for x in re.findall(r"\bid (\d+)", out)}
            assert ids and ids <= set(after["programs"].values()), (dev, out)
        assert after["sockops_attached"]
        fd = os.open(cgroup2_root(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            attached = syscall.prog_query(target_fd=fd, attach_type=syscall.BPF_CGROUP_SOCK_OPS)
        finally:
            os.close(fd)
        assert before["sockops"] not in attached and after["programs"]["sockops"] in attached
        # the pinned sk_lookup link now runs the new program (updated in place, never absent)
        fd = os.open(f"/run/netns/{node_ns}", os.O_RDONLY)
        try:
            assert syscall.prog_query(target_fd=fd, attach_type=syscall.BPF_SK_LOOKUP) == [
                after["programs"]["sk_lookup"]]
        finally:
            os.close(fd)
        assert after["sk_lookup_attached"]
        # the established connection goes on, and its flow record (a map kept across the
        # reload) still counts it
        held.sendall(b"y")
        assert held.recv(1) == b"k"
        mine = held.getsockname()
        assert [f for f in dp.read_flows() if f.sport == mine[1] and f.src == a.ip]
        relay.drain()
        ask_who(a.name, d.ip, 8080)
        assert relay.next()["listener"] == 15001
        held.close()
    finally:
        dp.leave(_pod(a))


def test_sync_makes_the_kernel_match_the_node_pods(topo, dp, relay, servers):
    a, b, c, d, _e = pods(topo)
    node_ns = topo.nodes[0].name
    everyone = [(_pod(a), True), (_pod(b), False), (_pod(c), False), (_pod(d), False)]
    try:
        dp.sync(everyone)
        assert set(dp.enrolled()) == {a.ip}
        assert dp.status()["tc"][a.veth] == "lw_pod_out"
        dp.sync([(_pod(b), True), (_pod(c), False), (_pod(d), False)])   # A is gone
        assert set(dp.enrolled()) == {b.ip}
        assert a.veth not in dp.status()["tc"]
        assert "clsact" not in sh("tc", "-n", node_ns, "qdisc", "show", "dev", a.veth)
        assert dp.status()["tc"]["eth0"] == "lw_inbound"                # the uplink stays
    finally:
        dp.sync([(p, False) for p, _ in everyone])
    assert dp.enrolled() == {}


def test_cluster_ip_reaches_the_tunnel_undnatted_when_dnat_skips_the_mark(topo, dp, relay,
                                                                          servers):
    """The local cluster DNATs cluster IPs with nftables in the node namespace. Its
    prerouting DNAT must let packets with the capture mark through untouched
    (`meta mark 0x4c57 accept`): then the tunnel sees the cluster IP as the destination,
    and the flow's later packets still find the tunnel's socket."""
    a, _b, c, d, _e = pods(topo)
    node_ns = topo.nodes[0].name
    table = f"""
table ip lwtest {{
    chain pre {{ type nat hook prerouting priority dstnat; meta mark 0x4c57 accept;
                 ip daddr 10.96.0.10 tcp dport 80 dnat to {d.ip}:8080; }}
    chain out {{ type nat hook output priority -100;
                 ip daddr 10.96.0.10 tcp dport 80 dnat to {d.ip}:8080; }}
}}
"""
    subprocess.run(["ip", "netns", "exec", node_ns, "nft", "-f", "-"], input=table, text=True,
                   check=True)
    # the relay (the tunnel) dials the cluster IP from the node: it needs a route to DNAT
    sh("ip", "-n", node_ns, "route", "add", "10.96.0.0/16", "dev", "eth0")
    dp.enroll(_pod(a))
    try:
        seen, _ = ask_who(c.name, "10.96.0.10", 80)           # unenrolled: plain DNAT
        assert seen.startswith(c.ip + ":")
        relay.drain()
        got, mine = transfer(a.name, "10.96.0.10", 80, send=300_000, receive=200_000)
        assert got == 200_000                                   # the whole flow went through
        accepted = relay.next()
        assert accepted["listener"] == 15001
        assert accepted["local"] == ["10.96.0.10", 80]          # the cluster IP, not D
    finally:
        dp.leave(_pod(a))
        subprocess.run(["ip", "netns", "exec", node_ns, "nft", "delete", "table", "ip", "lwtest"])
        subprocess.run(["ip", "-n", node_ns, "route", "del", "10.96.0.0/16"])


def _transparent_who(node_ns: str, source_ip: str, dest: tuple[str, int], *,
                     timeout: float = 3) -> str:
    """What the tunnel does for an enrolled client: dial from the node with the client's
    address as source (IP_TRANSPARENT). Returns what the server saw."""
    def dial():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, 19, 1)                   # IP_TRANSPARENT
        s.settimeout(timeout)
        s.bind((source_ip, 0))
        s.connect(dest)
        return s

    with in_netns(node_ns, dial) as s:
        s.sendall(b"who\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode().strip()


def test_replies_to_flows_the_tunnel_originated_go_to_the_tunnel(topo, dp, relay, servers):
    """Replies addressed to an enrolled pod's address, for a connection the tunnel opened in
    that pod's name, reach the tunnel's socket — from another node (uplink) and from pods on
    this node (enrolled or not) — instead of being routed to the pod."""
    a, b, _c, d, e = pods(topo)
    node_ns = topo.nodes[0].name
    dp.enroll(_pod(a))
    dp.enroll(_pod(b))
    try:
        relay.drain()
        assert _transparent_who(node_ns, a.ip, (e.ip, 8080)).startswith(a.ip + ":")   # uplink
        assert _transparent_who(node_ns, a.ip, (d.ip, 8080)).startswith(a.ip + ":")   # unenrolled
        assert _transparent_who(node_ns, a.ip, (b.ip, 8080)).startswith(a.ip + ":")   # enrolled
        assert relay.drain() == []                  # none of it was taken for a new capture
    finally:
        dp.leave(_pod(a))
        dp.leave(_pod(b))
    # without the datapath the reply is routed to the pod itself, and the dial fails
    with pytest.raises(OSError):
        _transparent_who(node_ns, a.ip, (e.ip, 8080), timeout=1)


def test_show_prints_what_the_node_holds_and_enroll_names_a_missing_veth(topo, dp, relay,
                                                                          servers):
    a, _b, _c, d, _e = pods(topo)
    from node_agent.datapath import DatapathError, Pod

    with pytest.raises(DatapathError, match="no device lwvdeadbeef"):
        dp.enroll(Pod(ip="10.244.1.77", veth="lwvdeadbeef"))
    assert "10.244.1.77" not in dp.enrolled()
    dp.enroll(_pod(a))
    try:
        ask_who(a.name, d.ip, 8080)
        p = subprocess.run([sys.executable, "-m", "node_agent.bpf.show", "--cluster", topo.cluster,
                            "--node", "node1", "--netns", topo.nodes[0].name, "--flows"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert f"tc ingress {a.veth}" in p.stdout and "lw_pod_out" in p.stdout
        assert f"enrolled {a.ip}" in p.stdout
        assert "program pod_out" in p.stdout and "program sockops" in p.stdout
        assert f"outbound {a.ip}:" in p.stdout and f"-> {d.ip}:8080" in p.stdout
        none = subprocess.run([sys.executable, "-m", "node_agent.bpf.show", "--cluster", "tnone",
                               "--node", "node1"], capture_output=True, text=True, timeout=60)
        assert none.returncode == 1 and "nothing is installed" in none.stderr
    finally:
        dp.leave(_pod(a))


def test_a_reset_connection_is_closed_with_what_was_exchanged(topo, dp, relay, servers):
    a, _b, _c, d, _e = pods(topo)
    dp.enroll(_pod(a))
    try:
        s = connect(a.name, d.ip, 8080)
        mine = s.getsockname()
        s.sendall(b"hold\n")
        for _ in range(3):
            s.sendall(b"x")
            assert s.recv(1) == b"k"
        # one more byte carries the acknowledgement of the third "k"; its own "k" is never
        # acknowledged: "sent" counts what the client acknowledged
        s.sendall(b"x")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()                                       # RST, no FIN
        f = closed_flow(dp, a.ip, mine[1])
        assert not f.open
        assert (f.received_bytes, f.sent_bytes) == (len(b"hold\n") + 4, 3)
    finally:
        dp.leave(_pod(a))
