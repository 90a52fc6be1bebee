"""String matching as Istio defines it, for routes and for authorization.

Before: values from a request (a path, a header, a host, a principal). After: booleans.

- `string_match(m, value)`: a VirtualService `StringMatch` — exact, prefix, or regex (RE2
  semantics: the whole value must match, as Envoy's `safe_regex`); a match with nothing set
  matches any present value. Compiled regexes are cached.
- `authz_value_match(pattern, value)`: AuthorizationPolicy values — exact, `prefix*`,
  `*suffix`, or `*` (any non-empty value).
"""

from __future__ import annotations

import re
from functools import lru_cache

from control.config.model import StringMatch


@lru_cache(maxsize=1024)
def compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def string_match(m: StringMatch, value: str | None) -> bool:
    if value is None:
        return False
    if m.exact is not None:
        return value == m.exact
    if m.prefix is not None:
        return value.startswith(m.prefix)
    if m.regex is not None:
        return compiled(m.regex).fullmatch(value) is not None
    return True


def authz_value_match(pattern: str, value: str | None, *, ignore_case: bool = False) -> bool:
    if value is None:
        return False
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def any_match(patterns: tuple[str, ...], value: str | None, *, ignore_case: bool = False) -> bool:
    return any(authz_value_match(p, value, ignore_case=ignore_case) for p in patterns)
