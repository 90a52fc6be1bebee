"""The certificate authority of the control plane (docs/identity.md).

`spiffe_id` builds and parses SPIFFE IDs for every part; `certificates` builds X.509;
`authority` is the CA (generated or plug-in); `csr_check` decides who gets what (pure);
`node_workloads` is the narrow view of the cluster it asks; `grpc_service`/`grpc_server` serve
`lacewing.ca.v1.CertificateService` on the TLS port; `node_credentials` makes the per-node
client certificates of local mode; `metrics` counts issuance and refusals.
"""
