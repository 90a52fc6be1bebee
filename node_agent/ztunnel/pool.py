"""Idle tunnel connections kept for reuse, per key (no I/O: the caller opens and closes).

Before: an outbound inner connection over a framed tunnel ended cleanly (both FINs passed,
relay.join_framed released the TLS side). After: `put(key, conn)` keeps it — or says no, and
the caller closes it — and `take(key)` hands back the most recently used live one (LIFO keeps
few connections warm and lets the rest age out). The key is (source identity, expected
destination identity, next hop, TLS context): a context replaced by a renewed certificate or a
new trust bundle is another key, so old connections are never picked again and age out.

Connections idle longer than `idle_timeout` are dropped (`expired()`, and at `take`); it must be
shorter than the server's, so that the client, not the server, usually ends an idle connection.
`usable(conn)` is asked at `take`: a connection the peer closed or wrote to while idle is
dropped and handed to `discard`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

C = TypeVar("C")


class IdlePool(Generic[C]):
    def __init__(self, *, max_idle_per_key: int, idle_timeout: float,
                 usable: Callable[[C], bool], discard: Callable[[C], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_idle_per_key
        self._timeout = idle_timeout
        self._usable = usable
        self._discard = discard
        self._clock = clock
        self._idle: dict[Hashable, list[tuple[float, C]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def idle(self) -> list[C]:
        """Every connection kept now (most recent of each key last)."""
        return [conn for stack in self._idle.values() for _since, conn in stack]

    def put(self, key: Hashable, conn: C) -> bool:
        """Keep `conn` idle under `key`; False (not kept) when the key already holds the max."""
        stack = self._idle.setdefault(key, [])
        if len(stack) >= self._max or self._max <= 0:
            return False
        stack.append((self._clock(), conn))
        return True

    def take(self, key: Hashable) -> C | None:
        """The most recently idled live connection of `key`, or None."""
        stack = self._idle.get(key)
        if not stack:
            return None
        now = self._clock()
        while stack:
            since, conn = stack.pop()
            if now - since < self._timeout and self._usable(conn):
                if not stack:
                    del self._idle[key]
                return conn
            self._discard(conn)
        del self._idle[key]
        return None

    def expired(self) -> int:
        """Drop (and discard) connections idle too long or no longer usable; how many went."""
        now = self._clock()
        gone = 0
        for key in list(self._idle):
            keep = []
            for since, conn in self._idle[key]:
                if now - since < self._timeout and self._usable(conn):
                    keep.append((since, conn))
                else:
                    self._discard(conn)
                    gone += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return gone

    def clear(self) -> None:
        """Discard everything (the tunnel drains or closes)."""
        for stack in self._idle.values():
            for _since, conn in stack:
                self._discard(conn)
        self._idle.clear()
