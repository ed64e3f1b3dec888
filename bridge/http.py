"""``/healthz``, ``/readyz`` and ``/metrics`` on a tiny asyncio HTTP/1.0 server.

A full web framework is not needed for three GET routes, and this one installs no
signal handlers of its own (the service owns SIGTERM).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from outpost.health import ReadinessChecks

__all__ = ["Response", "health_routes", "serve"]

Response = tuple[int, str, bytes]
Route = Callable[[], Awaitable[Response]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def health_routes(registry: CollectorRegistry, readiness: ReadinessChecks) -> dict[str, Route]:
    """``/readyz`` runs the time-bounded checks (503 names what fails); ``/metrics`` runs
    them first too, so ``outpost_dependency_up`` is fresh at every scrape."""

    async def healthz() -> Response:
        return 200, "text/plain", b"ok\n"

    async def readyz() -> Response:
        result = await readiness.run()
        return result.status, "application/json", result.json()

    async def metrics() -> Response:
        await readiness.run()
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics}


def route_for(request_line: bytes, routes: Mapping[str, Route]) -> Route:
    """Pick the route for one request line (pure)."""
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2:
        return _fixed(405, b"bad request\n")
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method != "GET":
        return _fixed(405, b"GET only\n")
    return routes.get(path) or _fixed(404, b"not found\n")


def _fixed(status: int, body: bytes) -> Route:
    async def answer() -> Response:
        return status, "text/plain", body

    return answer


async def _handle(
    routes: Mapping[str, Route], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        async with asyncio.timeout(5):
            request_line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
        status, content_type, body = await route_for(request_line, routes)()
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
