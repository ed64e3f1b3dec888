"""The bridge in-process against the real broker and database: what lands where."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from schemas.documents import DEVICE_PRESENCE, DEVICE_STATUS, DEVICES, JOB_EXECUTIONS, JOB_REPORTS
from tests.integration.registry import Registry

from .helpers import (
    Publisher,
    RawDevice,
    eventually,
    http_get,
    presence_payload,
    running_bridge,
    settings,
    state_payload,
)

pytestmark = pytest.mark.integration


async def _devices(db, ids):
    await db[DEVICES].insert_many([{"_id": i, "tenant_id": "t1"} for i in ids])


async def test_state_presence_and_job_land_newest_wins_and_repeats_write_nothing(
    broker, mongo, mongo_db, unique
):
    dev, ghost = f"d{unique}-a", f"d{unique}-ghost"
    await _devices(mongo_db, [dev])
    await mongo_db[JOB_EXECUTIONS].insert_one(
        {"_id": f"j1:{dev}", "tenant_id": "t1", "status": "in_progress"}
    )
    pub = Publisher(broker, f"p{unique}")
    try:
        async with running_bridge(settings(broker, mongo.url, mongo_db.name, unique)) as (
            running,
            metrics,
        ):
            pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 5, n=5))
            pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 3, n=3))  # older: ignored
            pub.publish(f"devices/{dev}/presence", presence_payload(dev, 1, 1, "online"))
            pub.publish(
                f"devices/{dev}/jobs/j1/status",
                json.dumps(
                    {
                        "v": 1,
                        "device_id": dev,
                        "job_id": "j1",
                        "key": {"session": 1, "seq": 6},
                        "status": "downloading",
                        "progress": 40,
                    }
                ).encode(),
            )
            pub.publish(f"devices/{ghost}/state", state_payload(ghost, 1, 1))
            await pub.flushed(10)

            async def stored() -> bool:
                doc = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
                present = await mongo_db[DEVICE_PRESENCE].find_one({"_id": dev})
                job = await mongo_db[JOB_REPORTS].find_one({"_id": f"j1:{dev}"})
                return bool(
                    doc
                    and "state" in doc
                    and present
                    and job
                    and metrics.value("outpost_bridge_rejected_total", reason="unknown_device") == 1
                )

            await eventually(stored, within=15, what="writes")
            doc = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
            assert doc["state"]["counters"] == {"n": 5}
            assert "presence" not in doc  # presence is a document of its own
            assert doc["tenant_id"] == "t1"  # copied from the registry at creation
            present = await mongo_db[DEVICE_PRESENCE].find_one({"_id": dev})
            assert present["presence"]["status"] == "online"
            assert "state" not in present
            assert present["tenant_id"] == "t1"
            report = await mongo_db[JOB_REPORTS].find_one({"_id": f"j1:{dev}"})
            assert (report["status"], report["progress"], report["job_id"]) == (
                "downloading",
                40,
                "j1",
            )
            job = await mongo_db[JOB_EXECUTIONS].find_one({"_id": f"j1:{dev}"})
            assert job == {"_id": f"j1:{dev}", "tenant_id": "t1", "status": "in_progress"}
            assert await mongo_db[DEVICE_STATUS].find_one({"_id": ghost}) is None
            assert await mongo_db[DEVICE_PRESENCE].find_one({"_id": ghost}) is None
            registry = await mongo_db[DEVICES].find_one({"_id": dev})
            assert registry == {"_id": dev, "tenant_id": "t1"}  # the api's: never written

            # out of order across batches: an older message after a newer one
            writes = metrics.value("outpost_bridge_db_writes_total")
            pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 4, n=4))
            # a repeat of identical content (newer key, new uptime) writes nothing
            pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 7, n=5, uptime_s=99))
            await pub.flushed(10)
            await eventually(lambda: _acked(metrics, 7), within=10, what="acks")
            assert metrics.value("outpost_bridge_db_writes_total") == writes
            doc = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
            assert doc["state"]["counters"] == {"n": 5}
            assert doc["state"]["k"] == "000000:00000000000001.00000000000005"

            status, _ = await asyncio.to_thread(http_get, running.http_port, "/readyz")
            assert status == 200
    finally:
        pub.close()


async def _acked(metrics, n: int) -> bool:
    return metrics.value("outpost_bridge_acked_total") >= n


async def test_last_will_marks_offline_and_reconnect_online(broker, mongo, s3, mongo_db, unique):
    dev = f"d{unique}-will"
    async with (
        Registry(broker, mongo, s3, mongo_db.name) as registry,
        running_bridge(settings(broker, mongo.url, mongo_db.name, unique)),
    ):
        password = (await registry.register([dev]))[dev]
        device = RawDevice(broker, dev, session=1, password=password)
        await device.connect()

        async def status(expected: str):
            doc = await mongo_db[DEVICE_PRESENCE].find_one({"_id": dev})
            return bool(doc and doc.get("presence", {}).get("status") == expected)

        await eventually(lambda: status("online"), within=10, what="online")
        device.drop()
        await eventually(lambda: status("offline"), within=10, what="offline from will")
        doc = await mongo_db[DEVICE_PRESENCE].find_one({"_id": dev})
        assert doc["presence"]["reason"] == "connection_lost"
        again = RawDevice(broker, dev, session=2, password=password)
        await again.connect()
        await eventually(lambda: status("online"), within=10, what="online again")
        await again.close()
    pub = Publisher(broker, f"p{unique}")
    pub.publish(f"devices/{dev}/presence", b"", retain=True)  # other tests' bridges read it
    await pub.flushed(10)
    pub.close()


async def test_repeated_identical_state_refreshes_last_seen_at_most_once_per_interval(
    broker, mongo, mongo_db, unique
):
    dev = f"d{unique}-same"
    await _devices(mongo_db, [dev])
    pub = Publisher(broker, f"p{unique}")
    cfg = settings(broker, mongo.url, mongo_db.name, unique, state_refresh_s=1.0)
    try:
        async with running_bridge(cfg) as (_, metrics):
            pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 1, n=1, uptime_s=1))
            await pub.flushed(10)
            await eventually(lambda: _acked(metrics, 1), within=10, what="first state")
            first = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
            writes = metrics.value("outpost_bridge_db_writes_total")
            began = time.monotonic()
            # the same content every 0.1 s for 3 s: 30 messages
            for seq in range(2, 32):
                pub.publish(f"devices/{dev}/state", state_payload(dev, 1, seq, n=1, uptime_s=seq))
                await asyncio.sleep(0.1)
            await pub.flushed(10)
            await eventually(lambda: _acked(metrics, 31), within=10, what="all acked")
            elapsed = time.monotonic() - began
            refreshed = metrics.value("outpost_bridge_db_writes_total") - writes
            last = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
    finally:
        pub.close()
    # at most one write per started second of repeats (not 30), and at least one
    assert 1 <= refreshed <= math.ceil(elapsed) + 1
    assert last["last_seen"] > first["last_seen"]
    assert last["state"]["uptime_s"] > 20  # a refresh carries the newest uptime
    assert last["state"]["h"] == first["state"]["h"]
