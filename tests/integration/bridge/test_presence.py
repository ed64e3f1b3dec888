"""Idle fleets, resync from retained presence, and MongoDB going away."""

from __future__ import annotations

import asyncio

import pytest

from bridge.app import run_resync
from schemas.documents import DEVICE_PRESENCE, DEVICE_STATUS, DEVICES
from tests.integration.registry import Registry

from .helpers import (
    LOG,
    Publisher,
    RawDevice,
    eventually,
    http_get,
    presence_payload,
    private_mongo,
    running_bridge,
    settings,
    state_payload,
)

pytestmark = pytest.mark.integration


async def _online(db, ids, status="online") -> bool:
    return await db[DEVICE_PRESENCE].count_documents({"presence.status": status}) == len(ids)


async def test_idle_fleet_causes_zero_database_writes(broker, mongo, s3, mongo_db, unique):
    ids = [f"d{unique}-{i}" for i in range(50)]
    async with Registry(broker, mongo, s3, mongo_db.name) as registry:
        passwords = await registry.register(ids)
        fleet = [RawDevice(broker, i, 1, keepalive=2, password=passwords[i]) for i in ids]
        cfg = settings(broker, mongo.url, mongo_db.name, unique)
        async with running_bridge(cfg) as (_, metrics):
            await asyncio.gather(*(d.connect() for d in fleet))
            await eventually(lambda: _online(mongo_db, ids), within=20, what="fleet online")
            await eventually(lambda: _acked(metrics, 50), within=10, what="acks")
            ops = metrics.value("outpost_bridge_db_ops_total")
            writes = metrics.value("outpost_bridge_db_writes_total")
            assert writes == 50

            # The window: every device keeps its session alive twice (PINGREQ every 1 s).
            async def pinged() -> bool:
                return all(d.pings >= 2 for d in fleet)

            await eventually(pinged, within=20, what="keepalives")
            # Then a probe: one state. The bridge handles messages in order, so once the
            # probe is acknowledged anything sent in the window was handled before it.
            probe = fleet[0]
            await probe.publish(
                f"devices/{probe.device_id}/state", state_payload(probe.device_id, 1, 2)
            )
            await eventually(lambda: _acked(metrics, 51), within=10, what="the probe")
            assert metrics.value("outpost_bridge_acked_total") == 51
            assert metrics.value("outpost_bridge_db_ops_total") == ops + 1  # the probe's
            assert metrics.value("outpost_bridge_db_writes_total") == writes + 1
            await asyncio.gather(*(d.close() for d in fleet))


async def _acked(metrics, n: int) -> bool:
    return metrics.value("outpost_bridge_acked_total") >= n


async def test_resync_rebuilds_presence_after_the_presence_mirror_was_dropped(
    broker, mongo, s3, mongo_db, unique
):
    ids = [f"d{unique}-{i:03}" for i in range(300)]
    pub = Publisher(broker, f"p{unique}")
    registry = Registry(broker, mongo, s3, mongo_db.name)
    await registry.__aenter__()
    try:
        password = (await registry.register([ids[1]]))[ids[1]]  # the one that reconnects
        for n, dev in enumerate(ids):  # retained presence: even online, odd offline
            status = "online" if n % 2 == 0 else "offline"
            pub.publish(f"devices/{dev}/presence", presence_payload(dev, 3, 1, status), retain=True)
        await pub.flushed(20)
        others = [i for i in ids if i != ids[1]]
        await mongo_db[DEVICES].insert_many([{"_id": i, "tenant_id": "t1"} for i in others])
        cfg = settings(broker, mongo.url, mongo_db.name, unique)
        await run_resync(cfg, LOG, idle_s=1.0)
        await mongo_db.drop_collection(DEVICE_PRESENCE)  # the mirror is lost, the registry kept
        result = await run_resync(cfg, LOG, idle_s=1.0)
        assert result["modified"] >= 300  # the broker also retains other tests' devices
        docs = {
            d["_id"]: d
            for d in await mongo_db[DEVICE_PRESENCE].find({"_id": {"$in": ids}}).to_list()
        }
        assert len(docs) == 300
        for n, dev in enumerate(ids):
            assert docs[dev]["presence"]["status"] == ("online" if n % 2 == 0 else "offline")
            assert docs[dev]["tenant_id"] == "t1"

        # newer presence (a later session of the device) is never regressed by a resync
        newer = RawDevice(broker, ids[1], session=4, password=password)
        await newer.connect()
        try:
            await run_resync(cfg, LOG, idle_s=1.0)
            doc = await mongo_db[DEVICE_PRESENCE].find_one({"_id": ids[1]})
            assert doc["presence"]["status"] == "online"
            assert doc["presence"]["k"] == "000000:00000000000004.00000000000001"
        finally:
            await newer.close()
    finally:
        for dev in ids:  # clear retained messages: other tests resync the same broker
            pub.publish(f"devices/{dev}/presence", b"", retain=True)
        await pub.flushed(20)
        pub.close()
        await registry.__aexit__(None, None, None)


async def test_mongodb_outage_keeps_messages_unacked_then_catches_up(broker, servers_root, unique):
    ids = [f"d{unique}-{i}" for i in range(30)]
    pub = Publisher(broker, f"p{unique}")
    try:
        async with private_mongo(servers_root, unique, ids) as (server, db):
            cfg = settings(broker, server.url, db.name, unique)
            async with running_bridge(cfg) as (running, metrics):
                for dev in ids:
                    pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 1, n=1))
                await pub.flushed(10)
                await eventually(lambda: _acked(metrics, 30), within=15, what="first acks")
                server.stop()  # returns once the process is gone: nothing can be written now
                acked = metrics.value("outpost_bridge_acked_total")
                for dev in ids:
                    pub.publish(f"devices/{dev}/state", state_payload(dev, 1, 2, n=2))
                await pub.flushed(10)

                async def not_ready() -> bool:
                    status, _ = await asyncio.to_thread(http_get, running.http_port, "/readyz")
                    return status == 503

                await eventually(not_ready, within=20, what="/readyz 503")

                async def retrying() -> bool:  # the ping fails first, then the batch write
                    return metrics.value("outpost_bridge_store_retries_total") >= 1

                await eventually(retrying, within=20, what="batch write retried")
                # (other tests' traffic reaches this bridge too: compare, do not count)
                assert metrics.value("outpost_bridge_acked_total") == acked
                server.start()

                async def caught_up() -> bool:
                    return await db[DEVICE_STATUS].count_documents({"state.counters.n": 2}) == 30

                await eventually(caught_up, within=60, what="catch-up")
                await eventually(
                    lambda: _acked(metrics, acked + 30), within=10, what="acks after outage"
                )
                status, _ = await asyncio.to_thread(http_get, running.http_port, "/readyz")
                assert status == 200
    finally:
        pub.close()
