"""A tiny read-only HTTP/1.1 server for metrics, readiness and debug views.

Before: a part (control plane, node agent) has views to expose: Prometheus text, readiness,
JSON dumps. After: `serve(routes, host, port)` answers `GET`/`HEAD` on those paths with what the
route's function returns — `(status, content_type, body)` — and 404/405/400 otherwise; one request
per connection. `handle_request` is the sans-IO core (bytes of a request head in, bytes of the
response out). Used by the control plane (:15014: /metrics, /ready, /debug/status) and the node
agent (node_agent/admin.py: :15000 admin on loopback, :15020 metrics, :15021 readiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_REQUEST_HEAD = 8192

Reply = tuple[int, str, bytes]
Route = Callable[[dict[str, list[str]]], Reply]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def json_reply(obj: Any, status: int = 200) -> Reply:
    return status, "application/json", json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


def _response(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


def handle_request(head: bytes, routes: Mapping[str, Route]) -> bytes:
    try:
        method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
    except (UnicodeDecodeError, ValueError):
        return _response(*json_reply({"error": "bad request"}, 400))
    parts = urlsplit(target)
    route = routes.get(parts.path)
    if route is None:
        return _response(*json_reply({"error": "not found", "paths": sorted(routes)}, 404))
    if method not in ("GET", "HEAD"):
        return _response(*json_reply({"error": "read-only"}, 405))
    try:
        status, ctype, body = route(parse_qs(parts.query))
    except Exception as exc:  # noqa: BLE001 - a broken view answers 500, the server stays
        status, ctype, body = json_reply({"error": f"{type(exc).__name__}: {exc}"}, 500)
    return _response(status, ctype, body, head_only=method == "HEAD")


async def serve(routes: Mapping[str, Route], *, host: str, port: int) -> asyncio.Server:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            writer.write(handle_request(head, routes))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(on_client, host, port, limit=MAX_REQUEST_HEAD,
                                      reuse_address=True)
