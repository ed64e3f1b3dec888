"""Shared set-up of the scheduler's integration tests: what admins decide, and an executor.

The tests write only what the api would (firmware, rollouts, an admin's control); the
devices and what the bridge records of them come from :mod:`.devices`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
from pymongo import AsyncMongoClient

from outpost.store import Store
from scheduler.claims import Claims
from scheduler.executor import ExecutorConfig, RolloutExecutor
from scheduler.metrics import SchedulerMetrics
from scheduler.publisher import MqttSink, Presigner
from scheduler.store import RolloutStore
from schemas.documents import (
    ROLLOUT_PROGRESS,
    ROLLOUTS,
    RolloutDoc,
    RolloutProgressDoc,
)
from schemas.rollouts import RolloutControl, RolloutSpec, rollout_status
from schemas.topics import numbered_device_id

LOG = logging.getLogger("test.scheduler")


def device_ids(prefix: str, n: int) -> list[str]:
    """The ids :func:`tests.integration.scheduler.devices.online_fleet` gives its devices."""
    return [numbered_device_id(prefix, i) for i in range(n)]


def seed_firmware_object(s3, key: str, size: int = 4096) -> tuple[bytes, str]:
    data = secrets.token_bytes(size)
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
    return data, hashlib.sha256(data).hexdigest()


async def seed_firmware(db, s3, unique: str, version: str = "2.0") -> dict[str, Any]:
    key = f"fw/{unique}/image.bin"
    data, digest = seed_firmware_object(s3, key)
    doc = {
        "_id": f"fw-{unique}",
        "tenant_id": "t1",
        "version": version,
        "size": len(data),
        "sha256": digest,
        "s3_key": key,
        "hardware_models": ["hw1"],
        "status": "ready",
        "created_at": datetime.now(UTC),
    }
    await db["firmware"].insert_one(doc)
    return doc


def rollout_doc(job_id: str, firmware: dict[str, Any], **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "firmware": {"id": firmware["_id"], "version": firmware["version"]},
        "target": {"tags": ["ap"]},
        "waves": {"kind": "fixed", "size": 50},
        "grace_period": "PT30S",
    }
    base.update(spec)
    return RolloutDoc(
        id=job_id,
        tenant_id="t1",
        spec=RolloutSpec.model_validate(base),
        created_at=datetime.now(UTC),
        control=RolloutControl(status="running", rev="r0"),
    ).to_mongo()


async def control(db, job_id: str, status: str) -> None:
    """Stand in for the api: an admin asked to pause, resume or cancel."""
    rev = secrets.token_hex(4)
    await db[ROLLOUTS].update_one(
        {"_id": job_id}, {"$set": {"control": {"status": status, "rev": rev}}}
    )


def real_clock() -> datetime:
    return datetime.now(UTC)


def quiet_mqtt_logger() -> logging.Logger:
    logger = logging.getLogger("test.scheduler.mqtt")
    logger.setLevel(logging.ERROR)  # aiomqtt warns about every pending QoS 1 publish
    return logger


@contextlib.asynccontextmanager
async def executor(
    db, broker, s3, *, holder: str = "s1", clock=real_clock, config: ExecutorConfig | None = None
):
    client = aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.account("scheduler")[0],
        password=broker.account("scheduler")[1],
        identifier=f"sched-{holder}-{secrets.token_hex(3)}",
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=quiet_mqtt_logger(),
    )
    async with client:
        metrics = SchedulerMetrics()
        yield RolloutExecutor(
            RolloutStore(Store(db)),
            Claims(Store(db), holder, clock, LOG),
            MqttSink(client),
            Presigner(s3.client(), s3.bucket),
            metrics,
            clock,
            LOG,
            config or ExecutorConfig(presign_seconds=120, min_url_seconds=5),
        )


async def tick_until(
    ex: RolloutExecutor, done: Callable[[], Awaitable[bool]], limit_s: float = 60
) -> int:
    """Tick (as the periodic job would) until ``done()``; return the number of ticks."""
    deadline = time.monotonic() + limit_s
    ticks = 0
    while not await done():
        assert time.monotonic() < deadline, f"not done after {ticks} ticks"
        await ex.tick()
        ticks += 1
        await asyncio.sleep(0.05)  # pacing between ticks, not a wait for a delivery
    return ticks


async def status_of(db, job_id: str) -> str:
    """The rollout's status as the api shows it (admin control joined with progress)."""
    rollout = RolloutDoc.model_validate(await db[ROLLOUTS].find_one({"_id": job_id}))
    raw = await db[ROLLOUT_PROGRESS].find_one({"_id": job_id})
    progress = RolloutProgressDoc.model_validate(raw) if raw else None
    return rollout_status(
        rollout.spec,
        rollout.control,
        progress.status if progress else None,
        progress.control_rev if progress else None,
        datetime.now(UTC),
    ).value


async def progress_of(db, job_id: str) -> dict[str, Any]:
    raw = await db[ROLLOUT_PROGRESS].find_one({"_id": job_id})
    return (raw or {}).get("progress") or {}


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
    return f"d{unique}"
