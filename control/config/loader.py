"""Reading YAML documents from files or bytes, safely.

Before: a path or bytes from a user. After: a list of `Document`s (file, index, mapping), or a
`ConfigError` naming the file and document that could not be read. Empty documents are
skipped but keep their index, so indices match what the user counts in the file. What comes
next is `control.config.validate.validate_documents`, which turns documents into typed
resources.

Reading is defensive, because the bytes come from anyone:
- input larger than `MAX_FILE_BYTES` is refused before it is parsed, and a single document
  longer than `MAX_DOCUMENT_CHARS` is refused too (Kubernetes' object size limit);
- input that is not UTF-8 (after an optional BOM) is refused;
- nesting deeper than `MAX_DEPTH` is refused while composing, before Python recursion is at risk;
- more than `MAX_NODES_PER_DOCUMENT` nodes in a document, or `MAX_NODES_PER_FILE` in a file, is
  refused before the document is built (parsing costs hundreds of bytes per node), and so is
  a file of more than `MAX_DOCUMENTS_PER_FILE` documents;
- aliases are counted (`MAX_ALIASES`) and the size of each document *as if every alias were
  expanded* is bounded (`MAX_EXPANDED_NODES`), so a "billion laughs" document is an error,
  not a memory blow-up; a recursive alias is an error too;
- the YAML is read the way Kubernetes reads it (`sigs.k8s.io/yaml`): scalar mapping keys become
  strings (`8080:` is the key `"8080"`), timestamps stay strings, and a key repeated in one
  mapping is an error instead of "last one wins".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from control.config.errors import ConfigError, Problem

MAX_FILE_BYTES = 4 * 1024 * 1024
# Kubernetes refuses objects much over 1.5 MiB (etcd's request limit); so do we, per document.
MAX_DOCUMENT_CHARS = 1536 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 1000
# Nodes as written (scalars and collections). A mesh resource has hundreds; parsing costs
# hundreds of bytes per node, so these bound memory, not just time.
MAX_NODES_PER_DOCUMENT = 100_000
MAX_NODES_PER_FILE = 1_000_000
MAX_DOCUMENTS_PER_FILE = 50_000
MAX_EXPANDED_NODES = 1_000_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DROPPED_RESOLVERS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}


@dataclass(frozen=True)
class Document:
    file: str
    index: int
    obj: dict[str, Any]


class _LimitExceeded(Exception):
    """Raised inside the loader; turned into a ConfigError with the document's index."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class _KubeRules:
    """Kubernetes' reading rules, mixed into both the C and the pure-Python loader."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in _DROPPED_RESOLVERS]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        if not isinstance(node, MappingNode):
            raise ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        explicit = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        self.flatten_mapping(node)  # type: ignore[attr-defined]
        merged = len(node.value) - explicit
        mapping: dict[str, Any] = {}
        explicit_keys: set[str] = set()
        for position, (key_node, value_node) in enumerate(node.value):
            if not isinstance(key_node, ScalarNode):
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    "a mapping key must be a scalar", key_node.start_mark,
                )
            key = _key_string(self.construct_object(key_node, deep=deep))  # type: ignore[attr-defined]
            if position >= merged:
                if key in explicit_keys:
                    raise ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {key!r}", key_node.start_mark,
                    )
                explicit_keys.add(key)
            mapping[key] = self.construct_object(value_node, deep=deep)  # type: ignore[attr-defined]
        return mapping


def _construct_map(loader, node):  # type: ignore[no-untyped-def]
    data: dict[str, Any] = {}
    yield data
    data.update(loader.construct_mapping(node))


class _PyLoader(_KubeRules, yaml.SafeLoader):
    """Pure-Python loader: limits are checked while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._nodes = 0
        self._file_nodes = 0

    def compose_document(self):  # type: ignore[no-untyped-def]
        self._aliases = 0
        self._nodes = 0
        self._documents = getattr(self, "_documents", 0) + 1
        if self._documents > MAX_DOCUMENTS_PER_FILE:
            raise _LimitExceeded(f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file; split it")
        node = super().compose_document()
        if node is not None and node.end_mark.index - node.start_mark.index > MAX_DOCUMENT_CHARS:
            raise _LimitExceeded(f"document longer than {MAX_DOCUMENT_CHARS} characters")
        return node

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _LimitExceeded(f"more than {MAX_ALIASES} aliases in one document")
        self._nodes += 1
        self._file_nodes += 1
        _check_nodes(self._nodes, self._file_nodes, None)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitExceeded(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PyLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)

if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(_KubeRules, yaml.CSafeLoader):  # type: ignore[misc]
        """libyaml loader (about 3x faster); limits are checked on a first pass over events."""

    _CLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
else:  # pragma: no cover - libyaml is present on the supported platforms
    _CLoader = None  # type: ignore[assignment,misc]


def _check_nodes(nodes: int, file_nodes: int, index: int | None) -> None:
    if nodes > MAX_NODES_PER_DOCUMENT:
        raise _LimitExceeded(f"more than {MAX_NODES_PER_DOCUMENT} nodes in one document", index)
    if file_nodes > MAX_NODES_PER_FILE:
        raise _LimitExceeded(f"more than {MAX_NODES_PER_FILE} nodes in one file; split it", index)


def _check_events(text: str) -> None:
    """First pass for the libyaml loader: depth and alias limits, document by document."""
    parser = yaml.CSafeLoader(text)
    depth = aliases = start = nodes = file_nodes = 0
    index = -1
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, (yaml.ScalarEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                nodes += 1
                file_nodes += 1
                if nodes > MAX_NODES_PER_DOCUMENT or file_nodes > MAX_NODES_PER_FILE:
                    _check_nodes(nodes, file_nodes, max(index, 0))
            if isinstance(event, yaml.DocumentStartEvent):
                index += 1
                if index >= MAX_DOCUMENTS_PER_FILE:
                    raise _LimitExceeded(f"more than {MAX_DOCUMENTS_PER_FILE} documents in one file; split it", index)
                aliases = nodes = 0
                start = event.start_mark.index
            elif isinstance(event, yaml.DocumentEndEvent):
                if event.end_mark.index - start > MAX_DOCUMENT_CHARS:
                    raise _LimitExceeded(f"document longer than {MAX_DOCUMENT_CHARS} characters", index)
            elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _LimitExceeded(f"nested deeper than {MAX_DEPTH} levels", max(index, 0))
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise _LimitExceeded(
                        f"more than {MAX_ALIASES} aliases in one document", max(index, 0)
                    )
    finally:
        parser.dispose()


def _key_string(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)


def expanded_size(obj: Any, *, limit: int = MAX_EXPANDED_NODES) -> int:
    """Number of nodes `obj` would have with every shared (aliased) part copied out.

    Shared parts are measured once and multiplied, so the walk is linear in the document as
    written; it stops as soon as `limit` is passed, and a cycle raises `_LimitExceeded`.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in in_progress:
            raise _LimitExceeded("a recursive alias (a node that contains itself)")
        in_progress.add(key)
        children = node.values() if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise _LimitExceeded(
                    f"expands to more than {limit} nodes once aliases are resolved"
                )
        in_progress.discard(key)
        sizes[key] = total
        return total

    return size(obj)


def load_documents(source: str | Path | bytes, *, name: str | None = None) -> list[Document]:
    if isinstance(source, bytes):
        data, file = source, name or "<input>"
    else:
        file = name or str(source)
        try:
            with open(source, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigError([Problem(file, None, "", f"cannot read: {exc.strerror}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            [Problem(file, None, "", f"larger than {MAX_FILE_BYTES} bytes; split it into smaller files")]
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(file, None, "", f"not UTF-8 (invalid byte at offset {exc.start}); save the file as UTF-8")]
        ) from None
    return _parse_text(text, file)


def _parse_text(text: str, file: str) -> list[Document]:
    docs: list[Document] = []
    index = 0
    loader = None
    try:
        if _CLoader is not None:
            _check_events(text)
            loader = _CLoader(text)
        else:
            loader = _PyLoader(text)
        while loader.check_data():
            obj = loader.get_data()
            if obj is not None:
                expanded_size(obj)
                if not isinstance(obj, dict):
                    raise ConfigError(
                        [Problem(file, index, "", "a document must be a mapping with apiVersion and kind")]
                    )
                docs.append(Document(file, index, obj))
            index += 1
    except _LimitExceeded as exc:
        where = exc.index if exc.index is not None else index
        raise ConfigError([Problem(file, where, "", f"refused: {exc}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = (getattr(exc, "problem", None) or str(exc)).splitlines()[0]
        raise ConfigError([Problem(file, index, "", f"malformed YAML{where}: {problem}")]) from None
    except (ValueError, OverflowError, RecursionError) as exc:
        reason = str(exc).split(";")[0]
        raise ConfigError([Problem(file, index, "", f"cannot read a value: {reason}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return docs
