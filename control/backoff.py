"""Retry timing shared by every reconnecting part: exponential backoff with "equal jitter".

Before: a loop counts its consecutive failures. After: how long to wait before the next try —
half of min(maximum, initial × multiplier^(n-1)) fixed, half random — so that many clients
that lost the same server do not come back in lockstep. Pure; `rand` is injected.
Every retry loop uses this one rule: the xDS client, the Kubernetes source, the certificate
manager (through node_agent/certs/schedule.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, *, rand: Callable[[], float]) -> float:
        """Delay after the `attempt`-th consecutive failure (1-based)."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt - 1, 64))
        return base / 2 + rand() * base / 2
