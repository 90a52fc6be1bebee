"""Problems found in configuration documents, and the exception that carries them.

Every problem names where it is: the file, the document's index in that file (0-based), and a
JSON path into the document (`spec.http[0].route[1].weight`). `kind` tells an operator what to
do: fix an `invalid` field, drop or wait for an `unsupported` one, consider a `warning`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INVALID = "invalid"
UNSUPPORTED = "unsupported"
WARNING = "warning"


@dataclass(frozen=True)
class Problem:
    file: str
    index: int | None
    path: str
    message: str
    kind: str = INVALID

    def __str__(self) -> str:
        where = self.file
        if self.index is not None:
            where += f": document {self.index}"
        if self.path:
            where += f": {self.path}"
        label = "" if self.kind == INVALID else f"{self.kind}: "
        return f"{where}: {label}{self.message}"


@dataclass
class ConfigError(Exception):
    """One or more problems that stop a set of documents from being accepted."""

    problems: list[Problem] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
