"""The node tunnel: mTLS per workload identity, L4 policy, service load balancing.

Pure decisions (no I/O, tier-1 tested):
  `wire`      the tunnel header (original destination etc.) and the SNI that names an identity
  `authz`     L4 AuthorizationPolicy with Istio's semantics
  `peerauth`  PeerAuthentication mode for a workload and port
  `outbound`  (snapshot, source IP, original destination) -> Request
  `inbound`   (snapshot, peer identity, presented identity, target) -> Verdict
  `balancer`  picks a Service endpoint

I/O (asyncio, one module each):
  `tls`       TLS contexts per identity, SNI selection, client session cache (resumption)
  `relay`     byte relays between sockets (plain and TLS over memory BIOs)
  `proxy`     the listeners 15001 / 15006 / 15008 / 15021 and the connection handlers
  `telemetry` access log lines and istio_tcp_* metrics
  `__main__`  a standalone tunnel process (perf, debugging) fed a snapshot file

The node agent owns a `proxy.Tunnel`, calls `update(snapshot)` from its snapshot subscriber and
`start()`/`drain()` with its lifecycle. docs/tunnel.md documents the wire protocol.
"""
