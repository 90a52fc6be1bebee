"""The compiled resources, ready for the wire: type URL → name → packed resource + audience.

Before: the compiler (control/compiler.py) has packed what changed (control/xds/resources.py).
After: `apply` installs it, bumps the catalog version and tells every listener (the xDS server,
control/xds/server.py) which names of which types changed, with the instant the change began
(for the convergence histogram). The server reads `entries` to answer a new or reconnecting
client with the difference to what it already has.

Audience: "all" (workloads, services, waypoints, mesh settings), "nodes" (L4 policy:
PeerAuthentication, AuthorizationPolicy without targetRefs), or — for the L7 kinds (routes,
destination rules, rate limits, AuthorizationPolicy with targetRefs) — the set of waypoints
("<namespace>/<name>") whose Services they concern (possibly empty: no waypoint gets it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from control.xds.resources import ALL_TYPES, Packed

ALL, NODES, WAYPOINTS = "all", "nodes", "waypoints"


@dataclass(frozen=True)
class Entry:
    packed: Packed
    obj: Any
    audience: str | frozenset[str] = ALL

    def seen_by(self, role_audience: str, waypoint: str = "") -> bool:
        a = self.audience
        if isinstance(a, frozenset):
            return role_audience == WAYPOINTS and waypoint in a
        return a == ALL or a == role_audience


@dataclass(frozen=True)
class Change:
    version: int
    changed: dict[str, frozenset[str]]  # type URL -> names changed or removed
    started_at: float = field(default_factory=time.monotonic)  # monotonic


class Catalog:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {t: {} for t in ALL_TYPES}
        self.version = 0
        self.ready = False  # set once every source has delivered its first full state
        self.listeners: list[Callable[[Change], None]] = []

    @property
    def version_info(self) -> str:
        return str(self.version)

    def apply(self, upserts: dict[tuple[str, str], Entry], removes: set[tuple[str, str]],
              *, started_at: float | None = None) -> Change | None:
        changed: dict[str, set[str]] = {}
        for (type_url, name), entry in upserts.items():
            old = self.entries[type_url].get(name)
            if old is not None and old.packed.version == entry.packed.version \
                    and old.audience == entry.audience:
                continue
            self.entries[type_url][name] = entry
            changed.setdefault(type_url, set()).add(name)
        for type_url, name in removes:
            if self.entries[type_url].pop(name, None) is not None:
                changed.setdefault(type_url, set()).add(name)
        if not changed:
            return None
        self.version += 1
        change = Change(self.version, {t: frozenset(n) for t, n in changed.items()},
                        started_at if started_at is not None else time.monotonic())
        for listener in list(self.listeners):
            listener(change)
        return change

    def mark_ready(self) -> None:
        if not self.ready:
            self.ready = True
            change = Change(self.version, {})
            for listener in list(self.listeners):
                listener(change)

    def counts(self) -> dict[str, int]:
        return {t: len(e) for t, e in self.entries.items()}

    def objects(self, type_url: str, audience: str, waypoint: str = "") -> dict[str, Any]:
        """What a client of that audience (and waypoint, for waypoints) sees of a type."""
        return {n: e.obj for n, e in self.entries[type_url].items()
                if e.seen_by(audience, waypoint)}
