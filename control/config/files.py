"""Reading the files an operator names on the command line (`-f`), for validate and analyze.

Before: paths as typed (`-` for standard input, a directory for its *.yaml, *.yml and *.json
files, not recursing). After: the documents read, plus a `Problem` for each path that could
not be read, so one bad file does not hide the problems of the others.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from control.config.errors import ConfigError, Problem
from control.config.loader import MAX_FILE_BYTES, Document, load_documents

SUFFIXES = (".yaml", ".yml", ".json")


def expand_paths(paths: Iterable[str]) -> list[str]:
    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if raw != "-" and path.is_dir():
            out.extend(str(p) for p in sorted(path.iterdir()) if p.suffix in SUFFIXES and p.is_file())
        else:
            out.append(raw)
    return out


def read_sources(paths: Iterable[str]) -> tuple[list[Document], list[Problem]]:
    docs: list[Document] = []
    problems: list[Problem] = []
    for path in expand_paths(paths):
        try:
            if path == "-":
                data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
                docs.extend(load_documents(data, name="<stdin>"))
            else:
                docs.extend(load_documents(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    return docs, problems
