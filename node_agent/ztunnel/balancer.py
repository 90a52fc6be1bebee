"""Picks one ready endpoint of a Service for a new connection: round robin per Service.

Before: the outbound decision found a Service for the original destination and the list of its
endpoints that are ready workloads. After: one of them. Round robin keeps a counter per Service
(the only state); `pick` is deterministic given that counter, so tests can predict it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class RoundRobin:
    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def pick(self, key: str, candidates: Sequence[T]) -> T:
        if not candidates:
            raise ValueError("no candidates")
        i = self._next.get(key, 0)
        self._next[key] = (i + 1) % (1 << 30)
        return candidates[i % len(candidates)]
