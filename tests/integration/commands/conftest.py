"""Device commands against the real stack: api in-process (through ``Registry``), the real
bridge, simulated devices with their own accounts, the scheduler's sender for groups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiomqtt
import httpx
import pytest
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.commands")


@pytest.fixture
async def db(mongo, mongo_db):
    """The test's database through a tz-aware client, as the services open it."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.url, tz_aware=True)
    try:
        yield client[mongo_db.name]
    finally:
        await client.close()


@pytest.fixture
def prefix(unique: str) -> str:
    return f"c{unique}"


async def until(
    check: Callable[[], Awaitable[Any]], within: float, what: str, interval: float = 0.05
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (found := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)
    return found


async def command(http: httpx.AsyncClient, device_id: str, command_id: str) -> dict[str, Any]:
    response = await http.get(f"/devices/{device_id}/commands/{command_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def answered(
    http: httpx.AsyncClient, device_id: str, body: dict[str, Any], within: float = 20
) -> dict[str, Any]:
    """Send a command waiting for its answer (``wait=5``, the api's longest); on a busy
    machine the answer may come later: then read the command until it has one."""
    response = await http.post(f"/devices/{device_id}/commands?wait=5", json=body)
    assert response.status_code in (200, 202), response.text
    sent: dict[str, Any] = response.json()

    async def final() -> dict[str, Any] | None:
        now = await command(http, device_id, sent["id"])
        return None if now["status"] in ("sent", "queued") else now

    return sent if response.status_code == 200 else await until(final, within, "an answer")


@contextlib.asynccontextmanager
async def observer(broker: Any, *topics: str) -> AsyncIterator[tuple[aiomqtt.Client, list]]:
    """A backend subscriber (observer role) recording ``(topic, payload, monotonic)``."""
    quiet = logging.getLogger("test.commands.mqtt")
    quiet.setLevel(logging.ERROR)
    user, password = broker.account("observer")
    seen: list[tuple[str, bytes, float]] = []
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=password,
        identifier=f"obs-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=quiet,
    ) as client:
        for t in topics:
            await client.subscribe(t, qos=1)

        async def record() -> None:
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else b""
                seen.append((str(message.topic), payload, time.monotonic()))

        task = asyncio.create_task(record(), name="command observer")
        try:
            yield client, seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
