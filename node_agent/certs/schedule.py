"""When to renew and when to retry: pure functions of times and a random source, no clock.

Before: the certificate manager holds a certificate's validity or counts failed attempts. After:
how many seconds to sleep. Renewal happens at half of the certificate's life, shifted by a random
± `jitter` fraction of the life so that many identities issued together do not all renew at the
same instant. Retries back off with `control.backoff.Backoff` (exponential, equal jitter, capped).
"""

from __future__ import annotations

from collections.abc import Callable

from control.backoff import Backoff  # re-exported: the one retry rule every part uses

Rand = Callable[[], float]  # uniform in [0, 1)


def renewal_time(*, not_before: float, not_after: float, fraction: float = 0.5,
                 jitter: float = 0.05, rand: Rand) -> float:
    """The instant to renew: not_before + life × (fraction ± jitter)."""
    if not 0 <= jitter < fraction < 1:
        raise ValueError("need 0 <= jitter < fraction < 1")
    life = max(0.0, not_after - not_before)
    return not_before + life * (fraction + jitter * (2 * rand() - 1))


def renewal_delay(*, now: float, not_before: float, not_after: float, fraction: float = 0.5,
                  jitter: float = 0.05, rand: Rand) -> float:
    at = renewal_time(not_before=not_before, not_after=not_after, fraction=fraction,
                      jitter=jitter, rand=rand)
    return max(0.0, at - now)


def is_usable(*, now: float, not_after: float) -> bool:
    """A certificate is presented only strictly before its notAfter (fail closed)."""
    return now < not_after


DEFAULT_BACKOFF = Backoff()
