"""The cluster state: every object the sources delivered, changed only by `apply(event)`.

Before: sources (control/sources/) put `Upsert`/`Delete`/`Replace` events (control/objects.py)
on a queue. After: the one writer task (control/writer.py) applies them here and hands the set
of changed keys to the compiler (control/compiler.py). Nothing else writes; readers (compiler,
debug views) run on the same event loop between writes, so they always see a consistent state.
An event that changes nothing (the same object again, as a relist or a rescan delivers) yields
no changed key, so it costs no compile and no push.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from control.objects import Delete, Event, Key, Replace, Upsert

Obj = Mapping[str, Any]


class ClusterState:
    def __init__(self) -> None:
        # kind -> namespace -> name -> object
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {}

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._objects.get(kind, {}).get(namespace, {}).get(name)

    def names(self, kind: str, namespace: str) -> list[str]:
        return list(self._objects.get(kind, {}).get(namespace, {}))

    def items(self, kind: str) -> Iterator[tuple[Key, Obj]]:
        for ns, objs in self._objects.get(kind, {}).items():
            for name, obj in objs.items():
                yield Key(kind, ns, name), obj

    def keys(self) -> Iterator[Key]:
        for kind in self._objects:
            for key, _ in self.items(kind):
                yield key

    def count(self, kind: str) -> int:
        return sum(len(v) for v in self._objects.get(kind, {}).values())

    def _put(self, key: Key, obj: Obj) -> bool:
        by_ns = self._objects.setdefault(key.kind, {}).setdefault(key.namespace, {})
        if by_ns.get(key.name) == obj:
            return False
        by_ns[key.name] = obj
        return True

    def _drop(self, key: Key) -> bool:
        by_ns = self._objects.get(key.kind, {}).get(key.namespace)
        if not by_ns or key.name not in by_ns:
            return False
        del by_ns[key.name]
        if not by_ns:
            del self._objects[key.kind][key.namespace]
        return True

    def apply(self, event: Event) -> set[Key]:
        """Apply one event; the keys whose object was added, changed or removed."""
        if isinstance(event, Upsert):
            return {event.key} if self._put(event.key, event.obj) else set()
        if isinstance(event, Delete):
            return {event.key} if self._drop(event.key) else set()
        if isinstance(event, Replace):
            changed = set()
            for kind in event.kinds:
                for key, _ in list(self.items(kind)):
                    if key not in event.objects and self._drop(key):
                        changed.add(key)
            for key, obj in event.objects.items():
                if key.kind in event.kinds and self._put(key, obj):
                    changed.add(key)
            return changed
        raise TypeError(f"not an event: {event!r}")
