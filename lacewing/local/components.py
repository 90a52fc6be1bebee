"""The mesh's own processes in a local cluster: control plane, node agents, waypoints.

Before: a cluster record (`cluster.json`) and its state directory. After: `ComponentSpec`s that
the supervisor runs like containers — in a node namespace or the fabric namespace, through
`nsenter --net=` (so bpffs stays visible), restarted with backoff, listed in status with their
pid and health.

`default_components(record, state_dir)` is the one list of what `local up` runs; each part adds
itself here as it is built. A spec may also be written by a command (for example `lacewing
waypoint apply`) as `components/<name>.json` in the state directory; the supervisor picks those
up on the next generation.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    name: str            # unique in the cluster, e.g. "control-plane", "node-agent-node0"
    kind: str            # "control-plane" | "node-agent" | "waypoint" | …
    netns: str           # the namespace it runs in (node or fabric)
    argv: tuple[str, ...]
    node: str = ""       # the node it belongs to, if any
    env: dict[str, str] = field(default_factory=dict)
    ready_port: int = 0  # healthy when this TCP port accepts connections (0: when running)
    ready_host: str = "127.0.0.1"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComponentSpec:
        return cls(**{**data, "argv": tuple(data["argv"]), "env": dict(data.get("env") or {})})


CONTROL_PLANE_GRPC_PORT = 15012
CONTROL_PLANE_METRICS_PORT = 15014
NODE_AGENT_READY_PORT = 15021


def control_plane_spec(record: dict[str, Any], state_dir: Path) -> ComponentSpec:
    """The control plane in the fabric namespace: CA + xDS on :15012, metrics on :15014."""
    cp = record.get("controlPlane") or {}
    return ComponentSpec(
        name="control-plane", kind="control-plane", netns=cp.get("netns", ""),
        argv=(sys.executable, "-m", "control", "--local-state", str(state_dir),
              "--grpc-address", f"0.0.0.0:{CONTROL_PLANE_GRPC_PORT}",
              "--metrics-address", f"0.0.0.0:{CONTROL_PLANE_METRICS_PORT}"),
        ready_port=CONTROL_PLANE_METRICS_PORT)


def node_agent_spec(record: dict[str, Any], state_dir: Path, node: dict[str, Any]) -> ComponentSpec:
    """One node agent in its node's namespace, reaching the control plane over the underlay."""
    address = (record.get("controlPlane") or {}).get("address", "")
    return ComponentSpec(
        name=f"node-agent-{node['name']}", kind="node-agent", netns=node["netns"],
        node=node["name"],
        argv=(sys.executable, "-m", "node_agent", "--cluster", str(record.get("name", "")),
              "--node", node["name"], "--control-plane", f"{address}:{CONTROL_PLANE_GRPC_PORT}",
              "--credentials", str(state_dir / "nodes" / node["name"]))
        + _tunnel_reuse_flag(),
        ready_port=NODE_AGENT_READY_PORT)


def _tunnel_reuse_flag() -> tuple[str, ...]:
    """LACEWING_TUNNEL_REUSE=0|1 in the environment of whoever brings the cluster up (the perf
    suite compares both) turns the node tunnels' connection reuse off or on; unset: default."""
    value = os.environ.get("LACEWING_TUNNEL_REUSE", "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return ("--no-tunnel-reuse",)
    if value in ("1", "true", "yes", "on"):
        return ("--tunnel-reuse",)
    return ()


def default_components(record: dict[str, Any], state_dir: Path) -> list[ComponentSpec]:
    """What every local cluster runs: the control plane and one node agent per node."""
    if not (record.get("controlPlane") or {}).get("netns"):
        return []
    return [control_plane_spec(record, state_dir)] + [
        node_agent_spec(record, state_dir, node) for node in record.get("nodes") or ()]


def read_components(state_dir: Path) -> list[ComponentSpec]:
    out = []
    folder = state_dir / "components"
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(ComponentSpec.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError):
                continue
    return out
