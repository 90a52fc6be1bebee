"""Names and paths of one local cluster, all derived from its name.

Before: a cluster name from the user. After: validated names for its namespaces, links, state
directory and bpffs folder. Everything made on the host starts with `lw-<cluster>-` (or is a
folder named `lw-<cluster>`), so leftovers are easy to find and two clusters never collide.
Cluster names hold no dash, so the prefix of one cluster is never the prefix of another's.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lacewing.errors import UserError

DEFAULT_CLUSTER = "lacewing"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
STATE_ROOT = Path(os.environ.get("LACEWING_STATE_ROOT", "/run/lacewing"))
BPFFS = Path("/sys/fs/bpf")
NETNS_ETC = Path("/etc/netns")


def check_cluster_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(
            f"invalid cluster name {name!r}: use 1-12 lowercase letters and digits, starting "
            "with a letter (it becomes part of namespace and link names)"
        )
    return name


@dataclass(frozen=True)
class ClusterNames:
    cluster: str

    @property
    def prefix(self) -> str:
        return f"lw-{self.cluster}-"

    @property
    def fabric_ns(self) -> str:
        return f"{self.prefix}fabric"

    def node_name(self, index: int) -> str:
        return f"node{index}"

    def node_ns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def pod_ns(self, namespace: str, pod: str) -> str:
        # Pod names can be long; a short digest keeps the netns name bounded and unique.
        digest = hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:10]
        return f"{self.prefix}p{digest}"

    @staticmethod
    def pod_veth(namespace: str, pod: str) -> str:
        """Name of the node-side end of a pod's veth (at most 15 characters)."""
        return "lwv" + hashlib.sha256(f"{namespace}/{pod}".encode()).hexdigest()[:8]

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / f"lw-{self.cluster}"

    @property
    def bpf_dir(self) -> Path:
        return BPFFS / f"lw-{self.cluster}"

    def owns_netns(self, netns: str) -> bool:
        return netns.startswith(self.prefix)
