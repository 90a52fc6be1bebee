"""A tiny read-only admin endpoint for the certificates on this node (loopback only).

Before: a running `CertificateManager`. After: `GET /certs` on the node agent's admin port
(15000 by convention, loopback only) answers `{"certificates": manager.describe()}` as JSON; it is
what `lacewing proxy-config secret` reads. Any other path is 404, any other method 405. The HTTP
handling is `control.debug_http`'s; this module only adds the route and the loopback rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable

from control import debug_http


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def routes(describe: Callable[[], list[dict]]) -> dict[str, debug_http.Route]:
    return {"/certs": lambda _query: debug_http.json_reply({"certificates": describe()})}


def handle_request(head: bytes, describe: Callable[[], list[dict]]) -> bytes:
    """Sans-IO: the bytes of a request head in, the bytes of the response out."""
    return debug_http.handle_request(head, routes(describe))


async def serve_admin(describe: Callable[[], list[dict]], *, host: str = "127.0.0.1",
                      port: int = 15000) -> asyncio.Server:
    """Start the endpoint; refuses a non-loopback host. Close the returned server to stop."""
    if not _is_loopback(host):
        raise ValueError(f"the admin endpoint listens on loopback only, not {host!r}")
    return await debug_http.serve(routes(describe), host=host, port=port)
