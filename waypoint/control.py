"""Following the control plane: the waypoint's snapshots over delta xDS.

Before: a node credential (the waypoint runs with one, like a node agent: control/ca/
node_credentials.py) and the control plane replicas' addresses. After: `follow(waypoint, ...)`
gives an `XdsClient` (node_agent/xds/client.py, role `waypoint`) whose `XdsState` builds a
`WaypointSnapshot` from each response and hands it to `Waypoint.update` — the waypoint's one
writer. While the control plane is away, the last accepted snapshot keeps serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def follow(waypoint, *, addresses: Sequence[str], credentials: str | Path, node: str,
           namespace: str, name: str, **options):
    from node_agent.xds.client import XdsClient
    from node_agent.xds.state import XdsState

    state = XdsState.for_waypoint(namespace, name)
    state.subscribers.append(waypoint.update)
    return XdsClient(addresses=list(addresses), credentials=credentials, node=node, state=state,
                     role="waypoint", waypoint=f"{namespace}/{name}", **options)
