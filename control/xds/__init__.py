"""The config push: Lacewing's resources on the wire and the delta xDS protocol.

`resources` (type URLs, protobuf encode/decode, content-hash versions), `session` (one stream's
protocol, sans-IO), `server` (the gRPC service on the control plane's mTLS port). The client
side is node_agent/xds/.
"""
