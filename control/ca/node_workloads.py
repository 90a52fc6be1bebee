"""Which service accounts have a pod on which node: the narrow question the CA asks.

Before: the control plane's workload state (issue 5 implements `NodeWorkloads` over it, from
Kubernetes or from local mode's YAML). After: control/ca/csr_check.py asks
`service_accounts_on(node)` for every CSR, so a node agent can only get identities of pods that
are on its node *now*.

`InMemoryNodeWorkloads` is a plain, thread-safe implementation for tests, benchmarks and any
caller that already holds the mapping.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

ServiceAccount = tuple[str, str]  # (namespace, service account)


class NodeWorkloads(Protocol):
    def service_accounts_on(self, node: str) -> set[ServiceAccount] | frozenset[ServiceAccount]:
        """(namespace, service account) of every pod currently scheduled on `node`."""
        ...


class InMemoryNodeWorkloads:
    """A mapping node → {(ns, sa)} that callers update as pods come and go.

    Copy-on-write: readers get an immutable snapshot without copying, writers replace it.
    """

    def __init__(self, initial: dict[str, Iterable[ServiceAccount]] | None = None) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, frozenset[ServiceAccount]] = {
            node: frozenset(sas) for node, sas in (initial or {}).items()
        }

    def service_accounts_on(self, node: str) -> frozenset[ServiceAccount]:
        return self._by_node.get(node, frozenset())

    def set_node(self, node: str, service_accounts: Iterable[ServiceAccount]) -> None:
        with self._lock:
            self._by_node = {**self._by_node, node: frozenset(service_accounts)}

    def add(self, node: str, namespace: str, service_account: str) -> None:
        with self._lock:
            current = self._by_node.get(node, frozenset())
            self._by_node = {**self._by_node, node: current | {(namespace, service_account)}}

    def remove(self, node: str, namespace: str, service_account: str) -> None:
        with self._lock:
            current = self._by_node.get(node, frozenset())
            self._by_node = {**self._by_node, node: current - {(namespace, service_account)}}
