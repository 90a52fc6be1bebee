"""The data planes' side of the xDS push: one client, one state.

`client.XdsClient` keeps a delta xDS stream to one of the control plane replicas and applies each
response to `state.XdsState` — the one state the data path reads (a frozen `NodeSnapshot` or
`WaypointSnapshot`, swapped atomically, subscribers called after). Waypoints reuse both with
`role="waypoint"` (see `waypoint_state`).
"""
