"""Where the control plane learns what exists: one interface, two implementations.

A source is an object with `name` and `async run(queue)`: it puts `Upsert`/`Delete`/`Replace`
events (control/objects.py) on the writer's queue, then a `Synced(name)` marker
(control/writer.py) once its first complete state is queued, and keeps following changes until
cancelled. `directory.DirectorySource` reads local mode's YAML folders; `kubernetes.KubernetesSource`
lists and watches an API server with the official client.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Source(Protocol):
    name: str

    async def run(self, queue: asyncio.Queue) -> None: ...
