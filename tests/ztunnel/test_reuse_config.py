"""Tier 1: how tunnel reuse is switched — the node agent's flag and the local cluster's
environment variable that the perf suite uses to compare reuse on and off."""

from __future__ import annotations

import pytest

from lacewing.local.components import node_agent_spec
from node_agent.__main__ import parse_args
from node_agent.ztunnel.proxy import TunnelConfig

BASE = ["--cluster", "c", "--node", "n", "--control-plane", "10.0.0.1:15012",
        "--credentials", "/tmp/x"]


def test_the_agent_flag_is_three_way():
    assert parse_args(BASE).tunnel_reuse is None          # the tunnel's default
    assert parse_args(BASE + ["--tunnel-reuse"]).tunnel_reuse is True
    assert parse_args(BASE + ["--no-tunnel-reuse"]).tunnel_reuse is False
    assert TunnelConfig().reuse is True                    # the default, docs/tunnel.md


@pytest.mark.parametrize("value, flag", [
    (None, None), ("0", "--no-tunnel-reuse"), ("off", "--no-tunnel-reuse"),
    ("1", "--tunnel-reuse"), ("true", "--tunnel-reuse"), ("", None)])
def test_local_clusters_pass_the_environment_to_their_node_agents(monkeypatch, tmp_path,
                                                                   value, flag):
    if value is None:
        monkeypatch.delenv("LACEWING_TUNNEL_REUSE", raising=False)
    else:
        monkeypatch.setenv("LACEWING_TUNNEL_REUSE", value)
    spec = node_agent_spec({"name": "c", "controlPlane": {"address": "10.0.0.1"}}, tmp_path,
                           {"name": "node0", "netns": "ns0"})
    argv = list(spec.argv)
    assert "--tunnel-reuse" not in argv or flag == "--tunnel-reuse"
    assert "--no-tunnel-reuse" not in argv or flag == "--no-tunnel-reuse"
    if flag is not None:
        assert argv[-1] == flag
        assert parse_args(argv[argv.index("-m") + 2:]).tunnel_reuse is (flag == "--tunnel-reuse")
