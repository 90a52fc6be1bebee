"""Load balancers over the hosts a cluster may use now (outlier detection already applied).

Before: `outlier.usable()` gave the candidates; the proxy keeps each host's count of requests
in flight. After: one host per try, chosen per request (so HTTP/2 streams on one downstream
connection spread over endpoints as well).

- ROUND_ROBIN: in turn over the candidate list.
- LEAST_REQUEST (Istio's default): Envoy's power of two choices — two random candidates, the
  one with fewer requests in flight wins.
- RANDOM: uniform.
A try that is a retry avoids the hosts already tried when another candidate exists (Envoy's
previous-hosts retry predicate, which Istio configures).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

ROUND_ROBIN, LEAST_REQUEST, RANDOM = "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"
SUPPORTED = (ROUND_ROBIN, LEAST_REQUEST, RANDOM)


class Balancer:
    __slots__ = ("kind", "_rr", "rng")

    def __init__(self, kind: str | None = None, *, rng: random.Random | None = None) -> None:
        kind = kind or LEAST_REQUEST
        if kind == "UNSPECIFIED":
            kind = LEAST_REQUEST
        if kind == "PASSTHROUGH" or kind not in SUPPORTED:
            raise ValueError(f"load balancer {kind!r} is not supported; use one of "
                             f"{', '.join(SUPPORTED)}")
        self.kind = kind
        self._rr = 0
        self.rng = rng or random.Random()

    def pick(self, candidates: Sequence[str], in_flight: Callable[[str], int], *,
             avoid: Sequence[str] = ()) -> str | None:
        if avoid:
            fresh = [h for h in candidates if h not in avoid]
            if fresh:
                candidates = fresh
        n = len(candidates)
        if n == 0:
            return None
        if n == 1:
            return candidates[0]
        if self.kind == ROUND_ROBIN:
            self._rr += 1
            return candidates[self._rr % n]
        if self.kind == RANDOM:
            return candidates[self.rng.randrange(n)]
        a, b = self.rng.sample(range(n), 2)
        ha, hb = candidates[a], candidates[b]
        return ha if in_flight(ha) <= in_flight(hb) else hb
