"""Local mode: a Kubernetes-shaped cluster on one Linux host, made of network namespaces.

Modules, from the bottom up:
- `names`: every name and path a cluster uses, derived from its name (all start with `lw-`).
- `topology`: addresses (underlay, pod CIDRs, cluster IPs), pure.
- `netns`: the iproute2/nftables/setns calls that make and unmake namespaces and links.
- `manifests`: Kubernetes-shaped workload documents → typed objects, with exact errors.
- `store`: the cluster's state directory (applied config, status), the one place state lives.
- `dataplane`: pure rendering of per-node service rules and per-pod hosts files.
- `supervisor`: the long-running process that makes pods real and keeps them running.
- `cluster`: the API the CLI, tests, the demo and perf use (`LocalCluster`).
"""
