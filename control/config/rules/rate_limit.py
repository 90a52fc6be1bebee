"""RateLimitPolicy rules (Lacewing's own kind)."""

from __future__ import annotations

from typing import Any

from control.config.rules.common import Report, as_dict


def rate_limit_policy(spec: dict[str, Any], path: list[Any], r: Report) -> None:
    bucket = as_dict(spec, "tokenBucket")
    per_fill, capacity = bucket.get("tokensPerFill"), bucket.get("maxTokens")
    if isinstance(per_fill, int) and isinstance(capacity, int) and per_fill > capacity:
        r.invalid([*path, "tokenBucket", "tokensPerFill"],
                  f"tokensPerFill ({per_fill}) cannot exceed maxTokens ({capacity})")
