"""Reading YAML documents from files or bytes, safely.

Before: a path or bytes from a user. After: a list of `Document`s (file, index, mapping), or a
`ConfigError` naming the file and document that could not be read. Empty documents are
skipped but keep their index, so indices match what the user counts in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from control.config.errors import ConfigError, Problem

MAX_FILE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Document:
    file: str
    index: int
    obj: dict[str, Any]


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
        raise ConfigError([Problem(file, None, "", f"larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(file, None, "", f"not UTF-8 (byte {exc.start})")]) from None
    docs: list[Document] = []
    try:
        for index, obj in enumerate(yaml.safe_load_all(text)):
            if obj is None:
                continue
            if not isinstance(obj, dict):
                raise ConfigError(
                    [Problem(file, index, "", "a document must be a mapping with apiVersion and kind")]
                )
            docs.append(Document(file, index, obj))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            [Problem(file, len(docs), "", f"malformed YAML{where}: {getattr(exc, 'problem', exc)}")]
        ) from None
    return docs
