"""Request-target handling: split, validate and normalize the path that policy and routes see.

Before: the raw request target from HTTP/1.1 (`/a//b%2Fc?x=1#frag`) or HTTP/2 `:path`.
After: a `Target(path, query)` whose path is normalized once, the same way for authorization,
routing and the upstream (so the backend sees exactly what policy checked — Envoy's
`normalize_path` + `merge_slashes` + `path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT`
applied in place, Istio's `DECODE_AND_MERGE_SLASHES`):

- the fragment (`#...`) is dropped (CVE-2021-39156: `/admin#x` must not escape `/admin`);
- percent-encodings of unreserved characters are decoded, others are upper-cased;
- `%2F`, `%5C` and a literal backslash become `/` (CVE-2021-31920);
- runs of slashes are merged; `.` and `..` segments are resolved (RFC 3986 §5.2.4);
- a malformed escape, a control character or a path not starting with `/` is `BadTarget`
  (the proxy answers 400).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SLASHES = re.compile(r"/{2,}")
_FAST = re.compile(r"[A-Za-z0-9/\-_~]*")  # nothing to normalize unless '.', '%', '\' appear


class BadTarget(ValueError):
    """The request target cannot be made into a path; answer 400."""


@dataclass(frozen=True, slots=True)
class Target:
    path: str
    query: str = ""  # without the '?'

    @property
    def uri(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


def split_target(raw: str) -> tuple[str, str]:
    """`/p?q#f` → (`/p`, `q`); the fragment is dropped wherever it starts."""
    raw = raw.split("#", 1)[0]
    path, _, query = raw.partition("?")
    return path, query


def _decode(path: str) -> str:
    data = path.encode("utf-8", "surrogateescape")
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b == 0x25:  # '%'
            if i + 2 >= n:
                raise BadTarget(f"truncated percent-escape in path {path!r}")
            h1, h2 = data[i + 1], data[i + 2]
            if h1 not in _HEX or h2 not in _HEX:
                raise BadTarget(f"invalid percent-escape in path {path!r}")
            value = int(bytes((h1, h2)), 16)
            if value in _UNRESERVED:
                out.append(value)
            elif value in (0x2F, 0x5C):  # %2F, %5C: a slash (CVE-2021-31920)
                out.append(0x2F)
            else:
                out += b"%" + bytes((h1, h2)).upper()
            i += 3
            continue
        if b == 0x5C:  # a literal backslash
            out.append(0x2F)
        elif b < 0x21 or b == 0x7F:
            raise BadTarget("control character or space in path")
        else:
            out.append(b)
        i += 1
    return out.decode("utf-8", "surrogateescape")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on an absolute path whose slashes are already merged."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == ".":
            if last:
                out.append("")
        elif seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalize_path(path: str) -> str:
    if not path.startswith("/"):
        raise BadTarget(f"the path must start with '/': {path[:60]!r}")
    if _FAST.fullmatch(path) and "//" not in path:
        return path
    decoded = _decode(path)
    merged = _SLASHES.sub("/", decoded)
    return remove_dot_segments(merged)


def normalize_target(raw: str) -> Target:
    """The whole step for one request: split, drop the fragment, normalize the path."""
    path, query = split_target(raw)
    if path == "*":
        return Target("*", "")
    if "://" in path[:12]:  # absolute-form (a proxy request): keep only the path
        rest = path.split("://", 1)[1]
        slash = rest.find("/")
        path = rest[slash:] if slash >= 0 else "/"
    return Target(normalize_path(path), query)


# RFC 9110 §7.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]; uri-host = IP-literal /
# IPv4address / reg-name (unreserved, pct-encoded, sub-delims). An IP-literal holds an IPv6
# address (hex digits, ':' and a dotted IPv4 tail); IPvFuture is not accepted.
_AUTHORITY = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


def valid_authority(authority: str) -> bool:
    """Whether a Host (or `:authority`) value is well formed. A server must answer 400 to one
    that is not (RFC 9112 §3.2): `web.demo:80:80` or `[web.demo]:80` would otherwise reach
    policy as a host that no `hosts` rule names."""
    return _AUTHORITY.fullmatch(authority) is not None
