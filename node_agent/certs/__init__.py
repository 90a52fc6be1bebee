"""Certificates of the identities on this node: CA client, lifecycle manager, admin view.

`ca_client` talks to the control plane's CA; `csr` makes keys and CSRs; `schedule` holds the pure
timing rules (renewal at half-life with jitter, backoff); `manager` runs the lifecycle under
asyncio; `admin` serves `describe()` on loopback for `lacewing proxy-config secret`.
"""
