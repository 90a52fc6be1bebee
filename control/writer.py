"""The one writer of the control plane's state: events in, compiled changes out.

Before: sources (control/sources/) put events on `queue`. After: this task applies them in
batches (everything already queued is taken together, so a burst costs one compile) to the
cluster state, compiles what changed into the catalog (which wakes the xDS server), and marks the
catalog ready once every source has delivered its first complete state — until then no client
gets an answer, so a restarted control plane never pushes a half-known (or empty) mesh over
the state its data planes kept.
"""

from __future__ import annotations

import asyncio
import logging
import time

from control.catalog import Catalog
from control.compiler import Compiler
from control.metrics import ControlMetrics
from control.objects import Event
from control.state import ClusterState

log = logging.getLogger("lacewing.control.writer")

MAX_BATCH = 10_000


class Synced:
    """A marker a source puts on the queue once its first complete state is queued."""

    def __init__(self, source: str) -> None:
        self.source = source


class Writer:
    def __init__(self, *, state: ClusterState, compiler: Compiler, catalog: Catalog,
                 metrics: ControlMetrics | None = None, sources: set[str] = frozenset()) -> None:
        self.state = state
        self.compiler = compiler
        self.catalog = catalog
        self.metrics = metrics
        self.queue: asyncio.Queue[Event | Synced] = asyncio.Queue()
        self.waiting_for = set(sources)
        self.events_applied = 0

    def apply_batch(self, batch: list[Event | Synced]) -> None:
        changed = set()
        started = None
        for ev in batch:
            if isinstance(ev, Synced):
                self.waiting_for.discard(ev.source)
                continue
            changed |= self.state.apply(ev)
            self.events_applied += 1
            started = ev.at if started is None else min(started, ev.at)
        if changed:
            t0 = time.perf_counter()
            self.compiler.update(changed, started_at=started)
            if self.metrics is not None:
                self.metrics.compile_seconds.observe(time.perf_counter() - t0)
                self.metrics.refused.set(len(self.compiler.problems))
        if not self.waiting_for and not self.catalog.ready:
            self.compiler.update(set(), started_at=started)  # the mesh settings at least
            self.catalog.mark_ready()
            log.info("all sources synced: serving catalog version %s", self.catalog.version)

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                self.apply_batch(batch)
            except Exception:  # noqa: BLE001 - one bad batch must not stop the control plane
                log.exception("applying %d events failed", len(batch))


__all__ = ["Writer", "Synced"]
