"""Real devices for the scheduler's tests: registered, simulated, reported by the bridge.

:func:`online_fleet` registers the devices through the api (each gets its own broker
account and ACL), starts the real bridge in-process and the simulator's devices
(``device.sim.Fleet``), and waits until the bridge has recorded every device online with
its firmware. From then on the devices download from S3, report, reboot and come back
on their own; a test injects failures in the devices' behaviour (``device.behaviour.
Fault``), never in the database. A backend observer keeps every upgrade command the
devices were sent (:class:`CommandLog`), read only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from device.behaviour import Fault
from device.sim.fleet import Fleet, FleetOptions
from schemas.documents import DEVICE_PRESENCE, DEVICE_STATUS
from tests.integration.bridge.helpers import running_bridge
from tests.integration.bridge.helpers import settings as bridge_settings
from tests.integration.registry import Registry

__all__ = ["CommandLog", "Received", "Rig", "online_fleet", "until"]

LOG = logging.getLogger("test.scheduler.devices")


@dataclass(frozen=True)
class Received:
    job_id: str
    execution: int
    url: str
    sha256: str
    version: str
    expiry: int | None  # MQTT message expiry interval, seconds


@dataclass
class CommandLog:
    """Upgrade commands per device, as a backend subscriber to ``devices/+/jobs/+`` saw them.

    :meth:`flush` is how a test shows that something was *not* sent: it publishes a probe
    and waits for it. Every command the executor published before was acknowledged by
    the broker before the probe was sent, and Mosquitto hands one subscriber its
    messages in the order it accepted them, so once the probe is here, so is every
    command published before it.
    """

    prefix: str
    broker: Any
    commands: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    probes: set[str] = field(default_factory=set)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            device = str(message.topic).split("/")[1]
            if not device.startswith(self.prefix) or not isinstance(message.payload, bytes):
                continue
            if message.payload.startswith(b"probe:"):
                self.probes.add(message.payload.decode())
                self._arrived.set()
                continue
            body = json.loads(message.payload)
            self.commands[device].append(
                Received(
                    body["job_id"],
                    body["execution"],
                    body["firmware"]["url"],
                    body["firmware"]["sha256"],
                    body["firmware"]["version"],
                    getattr(message.properties, "MessageExpiryInterval", None),
                )
            )

    async def flush(self, within: float = 30) -> None:
        """Return once every command published before this call has been logged."""
        probe = f"probe:{secrets.token_hex(4)}"
        async with _observer(self.broker) as client:
            await client.publish(f"devices/{self.prefix}-probe/jobs/probe", probe, qos=1)
        async with asyncio.timeout(within):
            while True:
                self._arrived.clear()
                if probe in self.probes:
                    return
                await self._arrived.wait()

    def total(self) -> int:
        return sum(len(v) for v in self.commands.values())

    def reached(self, ids: Sequence[str]) -> int:
        return sum(1 for d in ids if self.commands[d])


@dataclass
class Rig:
    ids: list[str]
    fleet: Fleet
    commands: CommandLog
    registry: Registry
    db: Any

    async def statuses(self, ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """What the bridge recorded for ``ids`` (default: all of this rig's devices): its
        two documents per device (state, presence) joined into one dict."""
        wanted = {"_id": {"$in": list(self.ids if ids is None else ids)}}
        joined: dict[str, dict[str, Any]] = {}
        for collection in (DEVICE_STATUS, DEVICE_PRESENCE):
            for d in await self.db[collection].find(wanted).to_list(None):
                joined.setdefault(d["_id"], {}).update(d)
        return joined

    async def recorded(self, ids: Sequence[str], *, online: bool, firmware: str | None = None):
        """True once the bridge recorded every one of ``ids`` online (or offline)."""
        got = await self.statuses(ids)
        want = "online" if online else "offline"
        return len(got) == len(ids) and all(
            (d.get("presence") or {}).get("status") == want
            and (firmware is None or (d.get("state") or {}).get("firmware") == firmware)
            for d in got.values()
        )

    async def go_offline(self, ids: Sequence[str], limit_s: float = 30) -> None:
        await self.fleet.drop(ids, abrupt=False)
        await until(lambda: self.recorded(ids, online=False), limit_s, "offline recorded")

    async def come_back(self, ids: Sequence[str], limit_s: float = 30) -> None:
        await self.fleet.reconnect(ids)
        await until(lambda: self.recorded(ids, online=True), limit_s, "online recorded")


async def until(condition: Any, limit_s: float, what: str, interval: float = 0.1) -> None:
    """Poll the async ``condition`` until true; fail after ``limit_s`` seconds."""
    deadline = time.monotonic() + limit_s
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s}s waiting for {what}")
        await asyncio.sleep(interval)


def _observer(broker: Any) -> aiomqtt.Client:
    logger = logging.getLogger("test.scheduler.commands")
    logger.setLevel(logging.ERROR)
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        identifier=f"cmdlog-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=logger,
    )


@contextlib.asynccontextmanager
async def online_fleet(
    db: Any,
    broker: Any,
    mongo: Any,
    s3: Any,
    unique: str,
    n: int,
    *,
    prefix: str,
    faults: Mapping[str, Fault] | None = None,
    group: str | None = None,
    tags: Sequence[str] = ("ap",),
    firmware: str = "1.0",
    bridge: bool = True,
    own_broker: bool = False,
    **options: Any,
) -> AsyncIterator[Rig]:
    """``n`` registered devices online through the real bridge, all recorded online.

    ``options`` go to :class:`FleetOptions` (e.g. ``download_rate`` for a slow link).
    ``own_broker``: ``broker`` is the test's own, so the devices' accounts and retained
    messages are left on it (a shared one is cleaned up).
    """
    fleet_options = FleetOptions(
        devices=n,
        prefix=prefix,
        firmware=firmware,
        hardware_model="hw1",
        reconnect_base=0.2,
        reconnect_cap=1.0,
        connect_concurrency=32,
        **options,
    )
    ids = [fleet_options.device_id(i) for i in range(n)]
    commands = CommandLog(prefix, broker)
    async with contextlib.AsyncExitStack() as stack:
        registry = await stack.enter_async_context(
            Registry(broker, mongo, s3, db.name, clean_broker=not own_broker)
        )
        if group is not None:
            await registry.group(group)
        await registry.register(ids, group=group, tags=tags, hardware_model="hw1")
        if bridge:
            await stack.enter_async_context(
                running_bridge(bridge_settings(broker, mongo.url, db.name, unique))
            )
        observer = await stack.enter_async_context(_observer(broker))
        await observer.subscribe("devices/+/jobs/+", qos=1)
        watch = asyncio.create_task(commands.run(observer), name="command log")

        async def stop_watching() -> None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

        stack.push_async_callback(stop_watching)
        fleet = await stack.enter_async_context(
            Fleet(fleet_options, registry.fleet_broker(), LOG, faults=faults)
        )
        rig = Rig(ids, fleet, commands, registry, db)
        async with asyncio.timeout(60):
            await fleet.wait_ready()
        if bridge:
            await until(
                lambda: rig.recorded(ids, online=True, firmware=firmware), 120, "fleet recorded"
            )
        yield rig
