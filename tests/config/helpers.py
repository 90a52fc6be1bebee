"""Shared by the config tests: where the conformance data is, and small document builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from control.config.loader import Document, load_documents

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = REPO / ".." / "shared" / "conformance" / "istio"


def conformance_dir() -> Path:
    """The Istio conformance data beside the repository; its absence is a failure, not a skip."""
    if not (CONFORMANCE / "README.md").is_file():
        raise AssertionError(f"conformance data not found at {CONFORMANCE.resolve()}: "
                             "clone the repository beside shared/")
    return CONFORMANCE


def valid_files() -> list[Path]:
    base = conformance_dir()
    files = sorted((base / "api-examples").glob("*.yaml")) + sorted((base / "datasets").glob("*.yaml"))
    files += sorted((base / "crd-testdata").glob("*-valid.yaml"))
    return files


def invalid_files() -> list[Path]:
    return sorted((conformance_dir() / "crd-testdata").glob("*-invalid.yaml"))


def conformance_docs(files: list[Path]) -> list[tuple[Document, str | None]]:
    """Documents with the test-only `_err` key removed (and returned beside them)."""
    out = []
    for path in files:
        for doc in load_documents(path):
            obj = dict(doc.obj)
            err = obj.pop("_err", None)
            out.append((Document(doc.file, doc.index, obj), err))
    return out


def doc(text: str, *, file: str = "t.yaml") -> Document:
    """One document from YAML text."""
    docs = load_documents(text.encode(), name=file)
    assert len(docs) == 1
    return docs[0]


def vs(spec: dict[str, Any], **meta: Any) -> Document:
    return _doc("networking.istio.io/v1", "VirtualService", spec, meta)


def dr(spec: dict[str, Any], **meta: Any) -> Document:
    return _doc("networking.istio.io/v1", "DestinationRule", spec, meta)


def pa(spec: dict[str, Any], **meta: Any) -> Document:
    return _doc("security.istio.io/v1", "PeerAuthentication", spec, meta)


def ap(spec: dict[str, Any], **meta: Any) -> Document:
    return _doc("security.istio.io/v1", "AuthorizationPolicy", spec, meta)


def rlp(spec: dict[str, Any], **meta: Any) -> Document:
    return _doc("lacewing.dev/v1alpha1", "RateLimitPolicy", spec, meta)


def _doc(api_version: str, kind: str, spec: dict[str, Any], meta: dict[str, Any]) -> Document:
    metadata = {"name": "x", **meta}
    text = yaml.safe_dump({"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec})
    return load_documents(text.encode(), name="t.yaml")[0]
