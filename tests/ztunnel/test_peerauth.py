"""Tier 1: PeerAuthentication precedence, inheritance and port-level modes."""

from __future__ import annotations

from node_agent.ztunnel import peerauth
from tests.ztunnel.helpers import resource


def pa(spec: str, *, name="pa", ns="shop"):
    return resource(f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}
""")


def mode(policies, port=8080, ns="shop", labels=None):
    return peerauth.mode_for(policies, namespace=ns, labels=labels or {"app": "db"}, port=port)


def test_default_is_permissive():
    assert mode([]) == "PERMISSIVE"


def test_mesh_namespace_workload_precedence():
    mesh = pa("  mtls: {mode: STRICT}", ns="istio-system", name="mesh")
    nsp = pa("  mtls: {mode: PERMISSIVE}", name="ns")
    wl = pa("  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}", name="wl")
    assert mode([mesh]) == "STRICT"
    assert mode([mesh, nsp]) == "PERMISSIVE"
    assert mode([mesh, nsp, wl]) == "STRICT"
    assert mode([mesh, nsp, wl], labels={"app": "other"}) == "PERMISSIVE"
    assert mode([mesh], ns="elsewhere") == "STRICT"
    assert mode([nsp], ns="elsewhere") == "PERMISSIVE"


def test_unset_inherits():
    mesh = pa("  mtls: {mode: STRICT}", ns="istio-system", name="mesh")
    nsp = pa("  mtls: {mode: UNSET}", name="ns")
    assert mode([mesh, nsp]) == "STRICT"


def test_port_level():
    wl = pa("""  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "9090": {mode: PERMISSIVE}""")
    assert mode([wl], port=8080) == "STRICT"
    assert mode([wl], port=9090) == "PERMISSIVE"
    assert not peerauth.accepts_plaintext(mode([wl], port=8080))
    assert peerauth.accepts_plaintext("DISABLE")
