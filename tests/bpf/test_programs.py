"""The programs as artefacts: final C, self-test, loader errors, and the byte layouts shared
between C and Python checked against the kernel's own map info."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from node_agent.bpf import layout, pins, programs, selftest
from node_agent.bpf.settings import Settings, pin_dir
from node_agent.bpf.syscall import Map
from node_agent.datapath import EXCLUDE_OUTBOUND, Pod, parse_ports

pytestmark = [pytest.mark.bpf]


def loader(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node_agent.bpf.load", *args],
                          capture_output=True, text=True, timeout=120)


def test_print_c_shows_each_program_with_its_settings_and_headers_inlined():
    p = loader("--print-c")
    assert p.returncode == 0, p.stderr
    for prog in programs.PROGRAMS:
        assert f"/* ==== {prog.source} ==== */" in p.stdout
        assert f"int {prog.entry}(" in p.stdout
    assert "#define LW_PORT_OUTBOUND 15001" in p.stdout
    assert "#define LW_PORT_INBOUND 15006" in p.stdout
    assert '#include "lw_' not in p.stdout          # our headers are inlined: this is final
    one = loader("--print-c", "--program", "sockops", "--cluster", "c1", "--node", "node1")
    assert "lw_sockops" in one.stdout and "lw_pod_out(" not in one.stdout
    assert '#define LW_PIN_DIR "/sys/fs/bpf/lw-c1/node1"' in one.stdout


def test_settings_become_defines():
    flags = programs.cflags(settings=Settings(port_outbound=16001, mark=0x99))
    assert "-DLW_PORT_OUTBOUND=16001" in flags and "-DLW_MARK=153" in flags
    p = loader("--print-c", "--program", "pod_out", "--settings", '{"port_outbound": 16001}')
    assert "#define LW_PORT_OUTBOUND 16001" in p.stdout
    bad = loader("--print-c", "--settings", '{"port_outbund": 1}')
    assert bad.returncode == 2 and "port_outbund" in bad.stderr


def test_loader_without_cluster_says_what_it_needs():
    p = loader()
    assert p.returncode == 2
    assert "--cluster and --node are required" in p.stderr


@pytest.mark.parametrize("bad", ["", "a/b", "..", ".hidden"])
def test_pin_dir_refuses_names_that_are_not_one_path_part(bad):
    with pytest.raises(ValueError):
        pin_dir(bad, "node1")
    with pytest.raises(ValueError):
        pin_dir("c", bad)


def test_selftest_loads_every_program():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs")
    results = selftest()
    assert [r[0] for r in results] == [p.name for p in programs.PROGRAMS]
    assert all(ok for _, ok, _ in results), results


def test_layouts_match_the_maps_the_kernel_made():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs")
    cluster = "t" + secrets.token_hex(3)
    try:
        p = loader("--cluster", cluster, "--node", "node1")
        assert p.returncode == 0, p.stderr
        expect = {"lw_pods": (4, layout.POD.size), "lw_excl": (layout.EXCL_KEY.size, 1),
                  "lw_local": (4, 1), "lw_capt": (layout.CAPT_KEY.size, 16),
                  "lw_flows": (8, layout.FLOW.size), "lw_cfg": (4, layout.CFG.size),
                  "lw_stats": (4, 8), "lw_vips": (layout.VIP_KEY.size, 4),
                  "lw_tw": (layout.CAPT_KEY.size, 4), "lw_listeners": (4, 8)}
        assert set(expect) == set(programs.MAPS)
        for name, (ks, vs) in expect.items():
            with Map.open(pins.map_path(cluster, "node1", name)) as m:
                assert (m.key_size, m.value_size) == (ks, vs), name
        # loading again re-uses the pinned maps (their contents survive) and replaces programs
        with Map.open(pins.map_path(cluster, "node1", "lw_pods")) as m:
            m.update(layout.ip_key("10.244.9.9"), layout.POD.pack(7, 1, 0, 0))
        assert loader("--cluster", cluster, "--node", "node1").returncode == 0
        with Map.open(pins.map_path(cluster, "node1", "lw_pods")) as m:
            assert layout.POD.unpack(m.lookup(layout.ip_key("10.244.9.9")))[0] == 7
    finally:
        pins.remove(cluster, "node1")
    assert not os.path.exists(f"/sys/fs/bpf/lw-{cluster}")


def test_loader_with_netns_installs_the_policy_routing():
    if os.geteuid() != 0:
        pytest.fail("needs root: it loads eBPF programs and makes a namespace")
    cluster = "t" + secrets.token_hex(3)
    ns = f"lw-{cluster}-node1"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        p = loader("--cluster", cluster, "--node", "node1", "--netns", ns)
        assert p.returncode == 0, p.stderr
        rules = subprocess.run(["ip", "-n", ns, "rule", "show"], capture_output=True,
                               text=True).stdout
        assert "fwmark 0x4c57 lookup 19543" in rules
        routes = subprocess.run(["ip", "-n", ns, "route", "show", "table", "19543"],
                                capture_output=True, text=True).stdout
        assert "local default dev lo" in routes
        bad = loader("--cluster", cluster, "--node", "node1", "--netns", "lw-no-such-ns")
        assert bad.returncode == 1 and "does not exist" in bad.stderr
    finally:
        pins.remove(cluster, "node1")
        subprocess.run(["ip", "netns", "del", ns])


def test_port_annotations_parse_and_reject_garbage():
    pod = Pod.from_annotations(ip="10.244.1.2", veth="lwv00000000",
                               annotations={EXCLUDE_OUTBOUND: " 8080, 9090,,",
                                            "lacewing.dev/exclude-inbound-ports": ""})
    assert pod.exclude_outbound_ports == {8080, 9090}
    assert pod.exclude_inbound_ports == frozenset()
    for bad in ("http", "0", "65536", "80-90"):
        with pytest.raises(ValueError, match="exclude-outbound-ports"):
            parse_ports(bad, annotation=EXCLUDE_OUTBOUND)
