"""``/healthz``, ``/readyz`` and ``/metrics`` on a tiny asyncio HTTP/1.0 server.

A full web framework is not needed for three GET routes, and this one installs no
signal handlers of its own (the service owns SIGTERM).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["Response", "health_routes", "serve"]

Response = tuple[int, str, bytes]
Route = Callable[[], Response]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def health_routes(registry: CollectorRegistry, is_ready: Callable[[], bool]) -> dict[str, Route]:
    def readyz() -> Response:
        if is_ready():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    return {
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": readyz,
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry)),
    }


def respond(request_line: bytes, routes: Mapping[str, Route]) -> Response:
    """Pick the response for one request line (pure)."""
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2:
        return 405, "text/plain", b"bad request\n"
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method != "GET":
        return 405, "text/plain", b"GET only\n"
    route = routes.get(path)
    return route() if route else (404, "text/plain", b"not found\n")


async def _handle(
    routes: Mapping[str, Route], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(5):
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
        status, content_type, body = respond(request_line, routes)
        head = (
            f"HTTP/1.0 {status} {_REASONS.get(status, '')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass  # a slow or vanished client; nothing to answer
    finally:
        writer.close()


async def serve(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    """Start listening (port 0 picks a free one; see ``server.sockets``)."""
    return await asyncio.start_server(lambda r, w: _handle(routes, r, w), host, port)
