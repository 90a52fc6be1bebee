"""RateLimitPolicy: a local token bucket per policy, as Envoy's local rate limit filter.

Before: `config` found the policy that applies to a request's Service. After: `take(now)` says
whether the request may pass and how many tokens remain; the proxy answers a refusal with the
policy's status (429 unless set) and `x-ratelimit-remaining`-style header when the policy
names one.

The bucket starts full (`max_tokens`); every `fill_interval` it gains `tokens_per_fill`,
never above `max_tokens`. Refills happen in whole intervals counted from the bucket's start,
so the count of requests allowed over a window is exact: max_tokens + fills × tokens_per_fill.
The clock is passed in (monotonic seconds), so tests drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.config.model import RateLimitPolicy


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    remaining: int


class TokenBucket:
    __slots__ = ("max_tokens", "per_fill", "interval", "tokens", "_start", "_fills")

    def __init__(self, *, max_tokens: int, tokens_per_fill: int, fill_interval_s: float,
                 now: float) -> None:
        if max_tokens < 1 or tokens_per_fill < 1 or fill_interval_s <= 0:
            raise ValueError("a token bucket needs max_tokens ≥ 1, tokens_per_fill ≥ 1 and a "
                             "positive fill interval")
        self.max_tokens = max_tokens
        self.per_fill = tokens_per_fill
        self.interval = fill_interval_s
        self.tokens = max_tokens
        self._start = now
        self._fills = 0

    @classmethod
    def for_policy(cls, policy: RateLimitPolicy, *, now: float) -> TokenBucket:
        tb = policy.spec.token_bucket
        return cls(max_tokens=tb.max_tokens, tokens_per_fill=tb.tokens_added,
                   fill_interval_s=tb.fill_interval.total_seconds(), now=now)

    def _refill(self, now: float) -> None:
        fills = int((now - self._start) // self.interval)
        if fills > self._fills:
            self.tokens = min(self.max_tokens, self.tokens + (fills - self._fills) * self.per_fill)
            self._fills = fills

    def take(self, now: float) -> Verdict:
        self._refill(now)
        if self.tokens > 0:
            self.tokens -= 1
            return Verdict(True, self.tokens)
        return Verdict(False, 0)
