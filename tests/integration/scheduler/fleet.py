"""A small fake fleet for scheduler tests, until device/ and bridge/ land.

One MQTT connection (backend account) subscribes to ``devices/+/jobs/+`` and records,
per device of this test (ids start with ``prefix``), every command it receives. For each
new ``(job_id, execution)`` pair a device acts as the reference agent would (download the
URL, check sha256) and then writes what the bridge would record: the job status report
on ``job_executions.report`` and, on success, the new firmware on ``devices.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from schemas.documents import execution_id, order_key_str
from schemas.protocol import OrderKey

OK, FAIL, SILENT = "ok", "fail", "silent"


@dataclass
class Received:
    job_id: str
    execution: int
    url: str
    sha256: str
    version: str
    expiry: int | None


@dataclass
class FakeFleet:
    db: Any
    prefix: str
    behaviour: dict[str, str] = field(default_factory=dict)
    download: bool = True
    commands: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    downloads_ok: int = 0
    download_errors: list[str] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, client: aiomqtt.Client, ready: asyncio.Event) -> None:
        await client.subscribe("devices/+/jobs/+", qos=1)
        ready.set()
        async with asyncio.TaskGroup() as group:
            async for message in client.messages:
                device = str(message.topic).split("/")[1]
                if not device.startswith(self.prefix):
                    continue
                group.create_task(self._handle(device, message), name=f"device {device}")

    async def _handle(self, device: str, message: aiomqtt.Message) -> None:
        body = json.loads(message.payload)  # type: ignore[arg-type]
        props = message.properties
        got = Received(
            body["job_id"],
            body["execution"],
            body["firmware"]["url"],
            body["firmware"]["sha256"],
            body["firmware"]["version"],
            getattr(props, "MessageExpiryInterval", None),
        )
        seen = {(r.job_id, r.execution) for r in self.commands[device]}
        self.commands[device].append(got)
        if (got.job_id, got.execution) in seen:
            return  # a device ignores a (job, execution) it already handles
        mode = self.behaviour.get(device, OK)
        if mode == SILENT:
            return
        if self.download:
            await asyncio.to_thread(self._download, got)
        await self.report(device, got, "succeeded" if mode == OK else "failed")

    def _download(self, got: Received) -> None:
        try:
            with urllib.request.urlopen(got.url, timeout=10) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as exc:
            self.download_errors.append(str(exc))
            return
        if hashlib.sha256(data).hexdigest() == got.sha256:
            self.downloads_ok += 1
        else:
            self.download_errors.append("sha256 mismatch")

    async def report(self, device: str, got: Received, status: str) -> None:
        """Write what the bridge records for a job status message."""
        key = order_key_str(OrderKey(session=1, seq=next(self._seq)))
        now = datetime.now(UTC)
        await self.db["job_reports"].update_one(
            {"_id": execution_id(got.job_id, device)},
            {
                "$set": {
                    "job_id": got.job_id,
                    "device_id": device,
                    "status": status,
                    "k": key,
                    "updated_at": now,
                    "firmware": got.version if status == "succeeded" else None,
                }
            },
            upsert=True,
        )
        if status == "succeeded":
            await self.db["device_status"].update_one(
                {"_id": device}, {"$set": {"state.firmware": got.version}}
            )

    def distinct(self, device: str) -> set[tuple[str, int]]:
        return {(r.job_id, r.execution) for r in self.commands[device]}


@contextlib.asynccontextmanager
async def running(fleet: FakeFleet, broker: Any) -> Any:
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        identifier=f"fleet-{fleet.prefix}",
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    )
    ready = asyncio.Event()
    async with client:
        task = asyncio.create_task(fleet.run(client, ready), name="fake fleet")
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield fleet
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
