"""Mesh configuration: Istio-shaped resources read exactly, into one typed model.

What to import (every part imports from here; nothing is copied):
- reading files or bytes: `control.config.loader.load_documents` -> `[Document]`
  (size, depth, alias and encoding limits; a `ConfigError` otherwise);
- checking and typing (also importable from `control.config` itself):
  `control.config.validate.validate_documents(docs)` ->
  `(resources, problems)`, or `parse(doc)` -> one resource / `ConfigError`. Pure functions.
  Local mode's `apply` and the control plane's config source call these;
- the model the compiler, waypoint and node tunnel consume: `control.config.model`
  (`VirtualService`, `DestinationRule`, `PeerAuthentication`, `AuthorizationPolicy`,
  `RateLimitPolicy`, and the waypoint's Gateway API `Gateway` — validated and stored, not
  compiled — frozen dataclasses, one per kind whatever the API version);
  `resource.to_dict()` writes the canonical Istio-shaped dict back;
- problems: `control.config.errors` (`Problem`, `ConfigError`, `INVALID`, `UNSUPPORTED`,
  `WARNING`);
- cross-object warnings: `control.config.analyze.analyze(...)` (and `unenforceable`, the
  L7-policy placement check the waypoint re-exports);
- what is not implemented yet: `control.config.support.unsupported_field_list()`
  (the list `docs/configuration.md` carries).

The modules in order of the pipeline: `loader` (bytes -> documents), `schema` (CRD schema and
CEL rules), `codec` (model-driven field check, decode, encode), `rules` (semantic rules beyond the
schema, one module per kind family), `validate` (the pipeline), `analyze` (across resources).
"""

from control.config.errors import INVALID, UNSUPPORTED, WARNING, ConfigError, Problem
from control.config.loader import Document, load_documents
from control.config.model import Resource
from control.config.validate import parse, validate_document, validate_documents

__all__ = [
    "INVALID", "UNSUPPORTED", "WARNING", "ConfigError", "Problem", "Document", "load_documents",
    "Resource", "parse", "validate_document", "validate_documents",
]
