"""The state directory of one local cluster: what users applied, and what the cluster is.

Layout under `/run/lacewing/lw-<cluster>/`:
- `cluster.json`  how the cluster was made (nodes, whether we mounted bpffs, phase);
- `config/`       every applied object, one YAML file each — the directory of YAML that the
                  control plane reads in local mode (DESIGN §5);
- `generation`    bumped by every apply/delete/label; the supervisor reports what it has seen;
- `status.json`   written only by the supervisor (pods, services, components); stable schema,
                  see docs/local-mode.md;
- `logs/`         one log per pod container and component.

Writers: the CLI writes `config/` and `generation` under an exclusive lock; the supervisor is the
only writer of `status.json`. Every file is replaced atomically (write, then rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lacewing.local.names import ClusterNames


def atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def object_key(obj: dict[str, Any]) -> str:
    """A file name for an object: kind.group_namespace_name (names never hold `_`)."""
    api = str(obj.get("apiVersion", ""))
    group = api.rsplit("/", 1)[0] if "/" in api else "core"
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ("-" if obj.get("kind") == "Namespace" else "default")
    return f"{obj.get('kind')}.{group}_{ns}_{meta.get('name')}"


class Store:
    def __init__(self, names: ClusterNames):
        self.names = names
        self.root = names.state_dir
        self.config_dir = self.root / "config"
        self.logs_dir = self.root / "logs"

    # -- the cluster record -------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / "cluster.json").exists()

    def read_cluster(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "cluster.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_cluster(self, record: dict[str, Any]) -> None:
        atomic_write(self.root / "cluster.json", json.dumps(record, indent=2) + "\n")

    # -- applied configuration ----------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def objects(self) -> dict[str, dict[str, Any]]:
        out = {}
        if self.config_dir.is_dir():
            for path in sorted(self.config_dir.glob("*.yaml")):
                with contextlib.suppress(FileNotFoundError):
                    out[path.stem] = yaml.safe_load(path.read_text())
        return out

    def put_objects(self, objs: list[dict[str, Any]]) -> None:
        """Write objects (caller holds the lock and has validated them)."""
        for obj in objs:
            atomic_write(self.config_dir / f"{object_key(obj)}.yaml",
                         yaml.safe_dump(obj, sort_keys=False))

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                (self.config_dir / f"{key}.yaml").unlink()

    def generation(self) -> int:
        try:
            return int((self.root / "generation").read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def bump_generation(self) -> int:
        gen = self.generation() + 1
        atomic_write(self.root / "generation", f"{gen}\n")
        return gen

    # -- pod label overrides (`lacewing local label pod`) -------------------------------
    def pod_labels(self) -> dict[str, dict[str, str | None]]:
        try:
            return json.loads((self.root / "pod-labels.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_pod_labels(self, labels: dict[str, dict[str, str | None]]) -> None:
        atomic_write(self.root / "pod-labels.json", json.dumps(labels, indent=2, sort_keys=True))

    # -- status (the supervisor's) -------------------------------------------------------
    def read_status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_status(self, status: dict[str, Any]) -> None:
        atomic_write(self.root / "status.json", json.dumps(status, indent=2, sort_keys=True) + "\n")
