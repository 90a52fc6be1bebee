"""Gateway rules (Gateway API `Gateway`, read as a waypoint's declaration).

Lacewing is not an ingress gateway: a Gateway is accepted only as a waypoint
(`gatewayClassName: lacewing-waypoint`, what `lacewing waypoint generate` writes), with HBONE
listeners on the tunnel port 15008, the only port a waypoint listens on for mesh traffic. Other
classes, protocols and ports are *unsupported* (Gateway API allows them); listener names must be
unique and ports in range, as the Gateway API's own validation says (*invalid*).
"""

from __future__ import annotations

from typing import Any

from control.config.model import WAYPOINT_FOR_LABELS, WAYPOINT_FOR_VALUES, WAYPOINT_GATEWAY_CLASS
from control.config.rules.common import Report, as_dict, dict_items

TUNNEL_PORT = 15008
TUNNEL_PROTOCOL = "HBONE"


def gateway_metadata(obj: dict[str, Any], r: Report) -> None:
    labels = as_dict(as_dict(obj, "metadata"), "labels")
    for key in WAYPOINT_FOR_LABELS:
        value = labels.get(key)
        if key in labels and value not in WAYPOINT_FOR_VALUES:
            r.invalid(["metadata", "labels", key], f"invalid value {value!r}: must be one of "
                      f"{', '.join(WAYPOINT_FOR_VALUES)}")


def gateway(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    cls = spec.get("gatewayClassName")
    if isinstance(cls, str) and cls and cls != WAYPOINT_GATEWAY_CLASS:
        r.unsupported([*path, "gatewayClassName"],
                      f"gatewayClassName {cls!r} is not supported: Lacewing is not an ingress "
                      f"gateway and implements only waypoints (gatewayClassName: "
                      f"{WAYPOINT_GATEWAY_CLASS}); `lacewing waypoint generate -n NAMESPACE` "
                      "writes one")
    seen: dict[str, int] = {}
    for i, listener in dict_items(spec, "listeners"):
        lpath = [*path, "listeners", i]
        name = listener.get("name")
        if isinstance(name, str):
            if name in seen:
                r.invalid([*lpath, "name"], f"listener name {name!r} is already used by "
                          f"listeners[{seen[name]}]; listener names must be unique")
            else:
                seen[name] = i
        protocol, port = listener.get("protocol"), listener.get("port")
        if isinstance(protocol, str) and protocol and protocol != TUNNEL_PROTOCOL:
            r.unsupported([*lpath, "protocol"],
                          f"protocol {protocol!r} is not supported by Lacewing: a waypoint listens "
                          f"only for {TUNNEL_PROTOCOL} (the mesh's mTLS tunnel) on port {TUNNEL_PORT}")
        elif (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
              and port != TUNNEL_PORT):
            r.unsupported([*lpath, "port"],
                          f"port {port} is not supported by Lacewing: a waypoint's "
                          f"{TUNNEL_PROTOCOL} listener is on port {TUNNEL_PORT}, where node "
                          "tunnels send it traffic")
