"""Helpers for the device tests: device accounts, a backend-side observer of the topic tree."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import pytest

from deploy.local import Mosquitto
from device.sim import Broker
from tests.integration.registry import Registry


@dataclass
class Seen:
    topic: str
    payload: dict[str, Any]
    retain: bool


@dataclass
class Watcher:
    """Everything published under one subtree, with waits that poll under a deadline."""

    client: aiomqtt.Client
    prefix: str = ""
    messages: list[Seen] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for message in self.client.messages:
            if not str(message.topic).startswith(self.prefix):
                continue
            raw = message.payload if isinstance(message.payload, bytes) else b""
            try:
                data = json.loads(raw) if raw else {}
            except ValueError:  # e.g. a malformed config a test sends on purpose
                data = {"_raw": raw.decode(errors="replace")}
            self.messages.append(Seen(str(message.topic), data, message.retain))
            self._arrived.set()

    async def wait_for(
        self, predicate: Callable[[Seen], bool], within: float = 15.0, count: int = 1
    ) -> list[Seen]:
        async with asyncio.timeout(within):
            while True:
                found = [m for m in self.messages if predicate(m)]
                if len(found) >= count:
                    return found
                self._arrived.clear()
                await self._arrived.wait()

    def on(self, suffix: str) -> list[Seen]:
        return [m for m in self.messages if m.topic.endswith(suffix)]


@pytest.fixture
def broker_address(broker: Mosquitto) -> Broker:
    """Over TLS, verified with the local CA; the backend account (for the test's own
    publishes; devices get their own through ``registry``)."""
    return Broker(
        "127.0.0.1",
        broker.tls_port,
        broker.backend_username,
        broker.backend_password,
        tls=True,
        ca_file=str(broker.ca_file),
    )


@pytest.fixture
async def registry(
    broker: Mosquitto, mongo: Any, s3: Any, mongo_db: Any
) -> AsyncIterator[Registry]:
    """Registers devices through the api; they then connect with their own accounts."""
    async with Registry(broker, mongo, s3, mongo_db.name) as registry:
        yield registry


def backend_client(broker: Mosquitto, **kwargs: Any) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        identifier=f"test-{secrets.token_hex(4)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        **kwargs,
    )


@pytest.fixture
async def watch(broker: Mosquitto) -> AsyncIterator[Callable[[str], Any]]:
    """``await watch("devices/ap-x/#")`` -> a :class:`Watcher` subscribed to that filter.

    ``prefix`` keeps only topics starting with it (``devices/<id prefix>``).
    """
    clients: list[aiomqtt.Client] = []
    tasks: list[asyncio.Task[None]] = []

    async def start(topic_filter: str, prefix: str = "") -> Watcher:
        client = backend_client(broker)
        await client.__aenter__()
        clients.append(client)
        watcher = Watcher(client, prefix)
        await client.subscribe(topic_filter, qos=1)
        tasks.append(asyncio.create_task(watcher.run(), name=f"watch {topic_filter}"))
        return watcher

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for client in clients:
        await client.__aexit__(None, None, None)
