"""Local mode's source: the cluster's state directory, rescanned a few times a second.

Before: `lacewing local apply` writes `config/*.yaml` (Namespaces, ServiceAccounts, Deployments,
Services, mesh resources) and the supervisor writes `runtime/*.yaml` (Pods with node, address and
readiness; Nodes), each file replaced atomically. After: whenever any file's (size, mtime, inode)
changes, the changed files are re-read (`control.config.loader.load_documents`: size, depth and
alias limits) and the complete set of objects is put on the queue as one `Replace`; the state
turns it into the few keys that really changed. A file that cannot be read is logged and its
previous content kept, so a half-written file never removes objects.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from control.config.errors import ConfigError
from control.config.loader import load_documents
from control.objects import ALL_KINDS, Key, Replace, key_of
from control.writer import Synced

log = logging.getLogger("lacewing.control.directory")

Signature = tuple[int, int, int]


class DirectorySource:
    def __init__(self, folders: Iterable[str | os.PathLike[str]], *, interval: float = 0.2,
                 name: str = "directory") -> None:
        self.folders = [Path(f) for f in folders]
        self.interval = interval
        self.name = name
        self._files: dict[Path, tuple[Signature, list[tuple[Key, dict[str, Any]]]]] = {}
        self.scans = 0

    def _signatures(self) -> dict[Path, Signature]:
        out = {}
        for folder in self.folders:
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.name.endswith((".yaml", ".yml")) or entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                out[Path(entry.path)] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return out

    def scan(self) -> dict[Key, dict[str, Any]] | None:
        """Re-read what changed; the complete object set, or None when nothing changed."""
        sigs = self._signatures()
        changed = False
        for path in [p for p in self._files if p not in sigs]:
            del self._files[path]
            changed = True
        for path, sig in sigs.items():
            cached = self._files.get(path)
            if cached is not None and cached[0] == sig:
                continue
            try:
                docs = load_documents(path)
            except FileNotFoundError:
                continue
            except (ConfigError, OSError, UnicodeDecodeError) as exc:
                log.warning("cannot read %s (keeping what it held before): %s", path, exc)
                continue
            objs = []
            for doc in docs:
                key = key_of(doc.obj)
                if key is not None:
                    objs.append((key, doc.obj))
            self._files[path] = (sig, objs)
            changed = True
        self.scans += 1
        if not changed and self.scans > 1:
            return None
        out: dict[Key, dict[str, Any]] = {}
        for path in sorted(self._files):
            for key, obj in self._files[path][1]:
                out[key] = obj
        return out

    async def run(self, queue: asyncio.Queue) -> None:
        first = True
        while True:
            objects = await asyncio.to_thread(self.scan)
            if objects is not None:
                await queue.put(Replace(ALL_KINDS, objects))
            if first:
                await queue.put(Synced(self.name))
                first = False
            await asyncio.sleep(self.interval)
