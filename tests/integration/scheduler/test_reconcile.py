"""Config reconcile against the real broker and database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import time
from datetime import UTC, datetime, timedelta

import aiomqtt
import pytest
from pydantic import SecretStr

from deploy.local import Mosquitto, free_port
from deploy.local.process import port_is_free
from outpost.settings import HttpSettings, MongoSettings, MqttSettings, S3Settings
from outpost.store import Store
from scheduler.config import SchedulerSettings
from scheduler.publisher import MqttSink
from scheduler.reconcile import RECONCILE, ReconcilePolicy, Reconciler
from scheduler.service import SchedulerService, Settings
from schemas.examples import example_wifi_config
from schemas.wifi import config_hash
from tests.integration.scheduler.conftest import device_ids, quiet_mqtt_logger
from tests.integration.scheduler.devices import online_fleet, until

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.reconcile")
OLD = datetime.now(UTC) - timedelta(hours=1)
CONFIG = example_wifi_config()


async def desire(db, ids: list[str], *, version: int = 2, since: datetime = OLD) -> None:
    """What the api decided at ``since``: config ``version`` for ``ids``, with its history.

    Registry documents of devices that were registered through the api are updated; the
    others are created (they never connect in the test that uses them).
    """
    for d in ids:
        desired = {"version": version, "hash": config_hash(CONFIG), "updated_at": since}
        await db["devices"].update_one(
            {"_id": d},
            {"$set": {"desired_config": desired}, "$setOnInsert": {"tenant_id": "t1"}},
            upsert=True,
        )
        await db["device_configs"].insert_one(
            {
                "_id": f"{d}:{version:010d}",
                "tenant_id": "t1",
                "device_id": d,
                "version": version,
                "hash": config_hash(CONFIG),
                "created_at": since,
                "actor": "test",
                "cause": "test",
                "config": json.dumps(CONFIG.model_dump(mode="json")),
            }
        )


def mqtt(broker, name: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=quiet_mqtt_logger(),
    )


async def _retained_once(broker, prefix: str, expect: int, window_s: float) -> dict:
    found: dict[str, dict] = {}
    async with mqtt(broker, f"probe-{secrets.token_hex(3)}") as client:
        await client.subscribe("devices/+/config", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(window_s):
                async for message in client.messages:
                    device = str(message.topic).split("/")[1]
                    if device.startswith(prefix) and message.retain and message.payload:
                        found[device] = json.loads(message.payload)
                        if len(found) >= expect:
                            break
    return found


async def retained_configs(broker, prefix: str, expect: int, limit_s: float = 10) -> dict:
    """The retained configs of this test's devices, as a new subscriber sees them;
    re-subscribes until ``expect`` are there or ``limit_s`` passed."""
    deadline = time.monotonic() + limit_s
    while True:
        found = await _retained_once(broker, prefix, expect, min(1.0, limit_s))
        if len(found) >= expect or time.monotonic() >= deadline:
            return found


async def applied(db, ids: list[str], version: int) -> bool:
    """The bridge recorded every one of ``ids`` reporting ``version`` applied."""
    query = {"_id": {"$in": ids}, "state.config.version": version, "state.config.status": "applied"}
    return await db["device_status"].count_documents(query) == len(ids)


async def test_lagging_config_is_republished_then_applied_and_capped(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig:
        away = f"{prefix}-away"
        await rig.registry.register([away], tags=["ap"])  # registered, never connects
        ids = [*rig.ids, away]
        await desire(db, ids)  # an hour ago: every one of them lags
        policy = ReconcilePolicy(lag=timedelta(minutes=5), retry_after=timedelta(0), max_attempts=3)
        async with mqtt(broker, f"rec-{prefix}") as client:
            rec = Reconciler(Store(db), MqttSink(client), LOG, policy)
            now = datetime.now(UTC)
            assert await rec.run(now) == 3
            got = await retained_configs(broker, prefix, 3)
            assert {d: got[d]["version"] for d in ids} == dict.fromkeys(ids, 2)
            assert got[ids[0]]["config"] == CONFIG.model_dump(mode="json", exclude_none=True)
            # the two online devices apply it (their acks recorded by the bridge); the
            # third never connects
            await until(lambda: applied(db, rig.ids, 2), 30, "both acks recorded")
            counts = [await rec.run(now + timedelta(seconds=i)) for i in range(1, 5)]
    mine = {r["_id"]: r for r in await db[RECONCILE].find({"_id": {"$in": ids}}).to_list(None)}
    assert counts == [1, 1, 0, 0]  # only the absent one, twice more, then capped
    assert mine[away]["attempts"] == 3
    assert {d: mine[d]["attempts"] for d in rig.ids} == dict.fromkeys(rig.ids, 1)


async def retained_before_probe(broker, prefix: str) -> dict[str, bytes]:
    """Every retained config under ``prefix`` a new subscriber is given, and nothing else.

    The broker sends a subscription its retained messages before it handles the next
    packet of the same client, so once our own probe comes back, all of them are here.
    """
    probe = f"devices/{prefix}-probe/config"
    found: dict[str, bytes] = {}
    async with mqtt(broker, f"probe-{secrets.token_hex(3)}") as client:
        await client.subscribe("devices/+/config", qos=1)
        await client.publish(probe, b"probe", qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                if str(message.topic) == probe:
                    return found
                device = str(message.topic).split("/")[1]
                if device.startswith(prefix) and message.retain:
                    found[device] = message.payload  # type: ignore[assignment]
    raise AssertionError("probe lost")


async def test_broker_sigkill_loses_retained_configs_and_resync_restores_them(
    db, mongo, s3, prefix, tmp_path
):
    tmp_path.chmod(0o755)
    broker = Mosquitto(
        tmp_path / "mosquitto",
        free_port(),
        backend_password=secrets.token_urlsafe(12),
        autosave_interval=3600,
    )
    broker.start()
    started = time.monotonic()
    ids = device_ids(prefix, 20)
    # decided just now: nothing lags yet, so only a broker start makes them re-published
    await desire(db, ids, since=datetime.now(UTC))
    settings = Settings(
        MqttSettings(
            url=broker.url,
            username=broker.account("scheduler")[0],
            password=SecretStr(broker.account("scheduler")[1]),
        ),
        MongoSettings(url=mongo.url, database=db.name),
        S3Settings(
            endpoint_url=s3.url,
            bucket=s3.bucket,
            access_key_id=s3.access_key,
            secret_access_key=SecretStr(s3.secret_key),
        ),
        HttpSettings(port=free_port()),
        SchedulerSettings(instance="rec", reconcile_seconds=1, tick_seconds=1),
    )
    stop = asyncio.Event()
    service = SchedulerService(settings, LOG)
    task = asyncio.create_task(service.run(stop), name="scheduler under test")
    try:
        assert len(await retained_configs(broker, prefix, 20, limit_s=30)) == 20
        # A retained message no one re-publishes: whether it survives tells if the
        # broker kept its retained store (the resync may restore the others quickly).
        canary = f"{prefix}-canary"
        async with mqtt(broker, f"canary-{prefix}") as client:
            await client.publish(f"devices/{canary}/config", b"{}", qos=1, retain=True)
        assert canary in await retained_before_probe(broker, prefix)
        # let the first broker run a few seconds, so that its start and the restart are
        # told apart ($SYS uptime has a 1 s resolution); a wait on the clock, not delivery
        await asyncio.sleep(max(0.0, 6 - (time.monotonic() - started)))
        os.kill(broker.running_pid(), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while broker.running_pid() is not None or not port_is_free(broker.port):
            assert time.monotonic() < deadline, "killed broker still holds its port"
            await asyncio.sleep(0.1)
        broker.start()
        assert canary not in await retained_before_probe(broker, prefix)  # lost
        assert len(await retained_configs(broker, prefix, 20, limit_s=45)) == 20
        back = await retained_before_probe(broker, prefix)
        assert sorted(back) == ids  # restored by the resync, the canary not
        resyncs = await db["scheduler_claims"].count_documents(
            {"_id": {"$regex": "^config_resync@"}}
        )
        assert resyncs == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        broker.stop()
