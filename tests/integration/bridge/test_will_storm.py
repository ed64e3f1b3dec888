"""Thousands of devices dropped at the same instant: every Last Will ends up in MongoDB.

The fleet is 5,000 devices (the issue's number). FerretDB v1 scans the collection on
every conditional update, so 5,000 wills take tens of seconds there; set
``OUTPOST_TEST_WILL_STORM=1000`` for a quicker run while iterating.

The bridge runs as a subprocess: paho's network loop uses ``select()``, which cannot
watch a descriptor above 1024, and this test process holds thousands of sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from deploy.local import free_port
from schemas.documents import DEVICE_PRESENCE, DEVICES

from .helpers import (
    LOG,
    Publisher,
    RawDevice,
    bridge_env,
    eventually,
    spawn_bridge,
    wait_ready,
)

pytestmark = pytest.mark.integration


def _fleet_size() -> int:
    return int(os.environ.get("OUTPOST_TEST_WILL_STORM", 5000))


async def _count(db, status: str) -> int:
    return await db[DEVICE_PRESENCE].count_documents({"presence.status": status})


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_simultaneous_drop_of_a_fleet_marks_every_device_offline(
    broker, mongo, mongo_db, unique, tmp_path
):
    n = _fleet_size()
    ids = [f"d{unique}-{i:05}" for i in range(n)]
    await mongo_db[DEVICES].insert_many([{"_id": i, "tenant_id": "t1"} for i in ids])
    fleet = [RawDevice(broker, i, session=1) for i in ids]
    port = free_port()
    env = bridge_env(broker, mongo, mongo_db.name, unique, instance="w", http_port=port)
    proc = spawn_bridge(env, tmp_path / "bridge.log")
    try:
        await wait_ready(port, proc)
        for start in range(0, n, 500):
            await asyncio.gather(*(d.connect() for d in fleet[start : start + 500]))
        await eventually(
            lambda: _count_is(mongo_db, "online", n), within=600, interval=1, what="all online"
        )
        started = time.monotonic()
        for device in fleet:
            device.drop()  # all TCP connections closed within a few milliseconds
        await eventually(
            lambda: _count_is(mongo_db, "offline", n),
            within=1200,
            interval=1,
            what=f"{n} devices offline",
        )
        elapsed = time.monotonic() - started
        assert await _count(mongo_db, "online") == 0
        LOG.info("will storm stored", extra={"devices": n, "seconds": round(elapsed, 1)})
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # Clear the retained wills: every bridge a later test starts would be handed them.
        pub = Publisher(broker, f"clear{unique}")
        for device in fleet:
            pub.publish(device.topic, b"", retain=True)
        await pub.flushed(60)
        pub.close()


async def _count_is(db, status: str, n: int) -> bool:
    return await _count(db, status) == n
