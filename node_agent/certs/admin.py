"""A tiny read-only admin endpoint for the certificates on this node (loopback only).

Before: a running `CertificateManager`. After: `GET /certs` on the node agent's admin port
(15000 by convention, loopback only) answers `{"certificates": manager.describe()}` as JSON; it is
what `lacewing proxy-config secret` reads. Any other path is 404, any other method 405. The
node agent's full admin server (a later issue) can mount `handle_certs` instead of this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import Callable

MAX_REQUEST_HEAD = 8192


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def handle_request(head: bytes, describe: Callable[[], list[dict]]) -> bytes:
    """Sans-IO: the bytes of a request head in, the bytes of the response out."""
    try:
        request_line = head.split(b"\r\n", 1)[0].decode("ascii")
        method, target, _version = request_line.split(" ", 2)
    except (UnicodeDecodeError, ValueError):
        return _response("400 Bad Request", b'{"error": "bad request"}\n')
    path = target.split("?", 1)[0]
    if path != "/certs":
        return _response("404 Not Found", b'{"error": "not found; try /certs"}\n')
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b'{"error": "read-only"}\n')
    body = json.dumps({"certificates": describe()}, indent=2).encode() + b"\n"
    resp = _response("200 OK", body)
    return resp[: resp.index(b"\r\n\r\n") + 4] if method == "HEAD" else resp


async def serve_admin(describe: Callable[[], list[dict]], *, host: str = "127.0.0.1",
                      port: int = 15000) -> asyncio.Server:
    """Start the endpoint; refuses a non-loopback host. Close the returned server to stop."""
    if not _is_loopback(host):
        raise ValueError(f"the admin endpoint listens on loopback only, not {host!r}")

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            writer.write(handle_request(head, describe))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(on_client, host, port, limit=MAX_REQUEST_HEAD)
