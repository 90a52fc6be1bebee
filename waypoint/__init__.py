"""The waypoint: Lacewing's L7 proxy for the namespaces (or Services) that ask for one.

Before: the control plane compiles a `control.snapshot.WaypointSnapshot` for each waypoint.
After: requests that node tunnels send here are authorized, rate-limited, routed, retried and
measured with Istio's semantics, then forwarded to the chosen endpoint.

Layers, from pure to I/O (only `proxy` does asyncio; everything above it is sans-IO and
tested as functions and state machines):

- `paths`      path normalization (the CVE-2021-31920/39156 shapes) and URI splitting
- `matching`   Istio StringMatch and authorization value matching
- `authz`      L7 AuthorizationPolicy evaluation (403 `RBAC: access denied`)
- `ratelimit`  RateLimitPolicy token buckets (429)
- `retry`      retryOn conditions, attempts, Envoy's jittered backoff
- `outlier`    outlier detection (consecutive 5xx / gateway errors, ejection, panic)
- `balancer`   ROUND_ROBIN, LEAST_REQUEST, RANDOM over the healthy hosts
- `pool`       connection-pool limits (Envoy circuit breakers → 503 overflow)
- `config`     the snapshot compiled into services, routes and clusters
- `router`     VirtualService matching, weighted destinations, rewrites, faults, mirrors
- `http1`      a strict HTTP/1.1 request reader over httptools (smuggling shapes refused)
- `http2`      the HTTP/2 server side over h2 (invalid frames, rapid-reset floods → GOAWAY)
- `telemetry`  Istio's request metrics (prometheus_client) and trace propagation (OTel)
- `proxy`      asyncio: listeners, upstream keep-alive pools, the request pipeline
- `bootstrap`  a static snapshot from YAML, until the xDS client lands
"""
