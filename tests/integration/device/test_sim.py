"""The fleet simulator against the real broker: presence, state, wills, reconnects."""

from __future__ import annotations

import asyncio
import logging

import pytest

from device.sim import Broker, Fleet, FleetOptions
from schemas.protocol import WILL_SEQ

pytestmark = pytest.mark.integration

N = 50


async def test_fleet_presence_state_and_wills(broker_address: Broker, registry, watch, unique: str):
    prefix = f"s{unique}"
    watcher = await watch("devices/+/#", prefix=f"devices/{prefix}-")
    options = FleetOptions(devices=N, prefix=prefix, connect_concurrency=16, seed=1)
    await registry.register([options.device_id(i) for i in range(options.devices)])
    async with Fleet(options, registry.fleet_broker(), logging.getLogger("test.sim")) as fleet:
        first = fleet.session_base + 1  # the clock in ms at start, then one per connection
        assert first > 1_700_000_000_000
        async with asyncio.timeout(30):
            await fleet.wait_ready()
        online = await watcher.wait_for(
            lambda m: m.topic.endswith("/presence") and m.payload["status"] == "online", count=N
        )
        assert {m.payload["device_id"] for m in online} == set(fleet.ids)
        assert all(m.payload["key"] == {"session": first, "seq": 1} for m in online)
        await watcher.wait_for(lambda m: m.topic.endswith("/state"), count=N)

        sent = await fleet.publish_state_all()
        assert sent == N
        states = await watcher.wait_for(lambda m: m.topic.endswith("/state"), count=2 * N)
        last = {m.payload["device_id"]: m.payload["key"] for m in states}
        for device_id in fleet.ids:
            state = fleet.last_state(device_id)
            assert state is not None
            assert last[device_id] == state.key.model_dump()

        dropped, left = fleet.ids[:10], fleet.ids[10:15]
        async with asyncio.timeout(20):
            assert await fleet.drop(dropped, abrupt=True) == 10
            assert await fleet.disconnect(left) == 5
        wills = await watcher.wait_for(
            lambda m: (
                m.topic.endswith("/presence")
                and m.payload["status"] == "offline"
                and m.payload["reason"] == "connection_lost"
            ),
            count=10,
        )
        assert {m.payload["device_id"] for m in wills} == set(dropped)
        assert all(m.payload["key"] == {"session": first, "seq": WILL_SEQ} for m in wills)
        goodbyes = await watcher.wait_for(
            lambda m: m.topic.endswith("/presence") and m.payload.get("reason") == "shutdown",
            count=5,
        )
        assert {m.payload["device_id"] for m in goodbyes} == set(left)
        assert fleet.stats.connected == N - 15

        await fleet.reconnect(dropped)
        async with asyncio.timeout(20):
            await fleet.wait_connected(N - 5)
        back = await watcher.wait_for(
            lambda m: (
                m.topic.endswith("/presence")
                and m.payload["status"] == "online"
                and m.payload["key"]["session"] == first + 1
            ),
            count=10,
        )
        assert {m.payload["device_id"] for m in back} == set(dropped)
    # none of the abruptly dropped devices said goodbye itself
    assert not [
        m
        for m in watcher.messages
        if m.payload.get("device_id") in dropped
        and m.payload.get("reason") == "shutdown"
        and m.payload["key"]["session"] == first
    ]


async def test_a_restarted_simulator_is_newer_than_its_last_run(
    broker_address: Broker, registry, watch, unique: str
):
    """Its devices keep no state, so each run starts its sessions at the clock: the second
    run's "online" must be newer than the "offline" the first run said when it stopped,
    or the bridge keeps every device offline (a second ``outpost dev up``)."""
    prefix = f"r{unique}"
    watcher = await watch("devices/+/presence", prefix=f"devices/{prefix}-")
    options = FleetOptions(devices=2, prefix=prefix, connect_concurrency=2)
    await registry.register([options.device_id(i) for i in range(options.devices)])
    said: list[tuple[int, int]] = []
    for run in range(2):
        async with Fleet(options, registry.fleet_broker(), logging.getLogger("test.sim")) as fleet:
            async with asyncio.timeout(30):
                await fleet.wait_ready()
        presence = await watcher.wait_for(lambda m: True, count=4 * (run + 1))
        said = [(m.payload["key"]["session"], m.payload["key"]["seq"]) for m in presence]
    statuses = [m.payload["status"] for m in watcher.messages]
    assert statuses == ["online", "online", "offline", "offline"] * 2
    first_run_last, second_run_first = max(said[:4]), min(said[4:])
    assert second_run_first > first_run_last


async def test_fleet_config_and_upgrade_jobs_with_real_downloads(
    broker_address: Broker, registry, s3, watch, unique: str
):
    import hashlib
    import secrets
    from datetime import UTC, datetime, timedelta

    from schemas.examples import example_wifi_config
    from schemas.protocol import ConfigMessage, FirmwareRef, JobCommand, encode

    from .agents import FIRMWARE_SIGNER
    from .conftest import Seen

    prefix = f"j{unique}"
    watcher = await watch("devices/+/#", prefix=f"devices/{prefix}-")
    image = secrets.token_bytes(200 * 1024)
    key = f"fw/{prefix}/2.0.0.bin"
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=image)
    url = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": key}, ExpiresIn=600
    )

    def command(job_id: str, sha256: str) -> bytes:
        now = datetime.now(UTC)
        fw = FirmwareRef(
            version="2.0.0",
            size=len(image),
            sha256=sha256,
            url=url,
            url_expires_at=now + timedelta(minutes=10),
            hardware_models=(options.hardware_model,),
        )
        fw = fw.model_copy(update={"signature": FIRMWARE_SIGNER.sign(fw.manifest())})
        return encode(JobCommand(job_id=job_id, firmware=fw, issued_at=now))

    def reached(job_id: str, status: str):
        return lambda m: (
            m.topic.endswith(f"/jobs/{job_id}/status") and m.payload.get("status") == status
        )

    options = FleetOptions(
        devices=6,
        prefix=prefix,
        seed=3,
        download_rate=400 * 1024,
        firmware_key=FIRMWARE_SIGNER.public_text,
    )
    await registry.register([options.device_id(i) for i in range(options.devices)])
    async with Fleet(options, registry.fleet_broker(), logging.getLogger("test.sim")) as fleet:
        async with asyncio.timeout(20):
            await fleet.wait_ready()
        good, bad, cfg = fleet.ids[:4], fleet.ids[4], fleet.ids[5]
        sha = hashlib.sha256(image).hexdigest()
        async with backend_session(broker_address) as client:
            for device_id in good:
                await client.publish(f"devices/{device_id}/jobs/up-1", command("up-1", sha), qos=1)
            await client.publish(f"devices/{bad}/jobs/up-1", command("up-1", "0" * 64), qos=1)
            desired = ConfigMessage.for_config(example_wifi_config(), version=5)
            await client.publish(f"devices/{cfg}/config", encode(desired), qos=1, retain=True)

        done = await watcher.wait_for(reached("up-1", "succeeded"), count=4, within=30)
        assert {m.payload["device_id"] for m in done} == set(good)
        assert all(m.payload["key"]["session"] == fleet.session_base + 2 for m in done)  # rebooted
        assert all(m.payload["firmware"] == "2.0.0" for m in done)
        failed = (await watcher.wait_for(reached("up-1", "failed")))[0]
        assert failed.payload["device_id"] == bad
        assert failed.payload["reason"].startswith("sha256 mismatch")

        def applied(m: Seen) -> bool:
            return (
                m.topic == f"devices/{cfg}/state"
                and (m.payload.get("config") or {}).get("version") == 5
            )

        state = (await watcher.wait_for(applied))[0]
        assert state.payload["config"]["status"] == "applied"
        assert fleet.device(good[0]).firmware == "2.0.0"
        assert fleet.stats.jobs_succeeded == 4
        assert fleet.stats.jobs_failed == 1
        async with backend_session(broker_address) as client:
            await client.publish(f"devices/{cfg}/config", b"", qos=1, retain=True)


async def test_churn_drops_both_ways_and_devices_come_back(
    broker_address: Broker, registry, watch, unique: str
):
    prefix = f"c{unique}"
    watcher = await watch("devices/+/#", prefix=f"devices/{prefix}-")
    options = FleetOptions(
        devices=20,
        prefix=prefix,
        seed=5,
        churn_per_min=12.0,
        abrupt_share=0.5,
        reconnect_base=0.2,
        reconnect_cap=0.5,
    )
    await registry.register([options.device_id(i) for i in range(options.devices)])
    async with Fleet(options, registry.fleet_broker(), logging.getLogger("test.sim")) as fleet:
        async with asyncio.timeout(20):
            await fleet.wait_ready()
        await watcher.wait_for(
            lambda m: m.payload.get("reason") == "connection_lost", count=3, within=20
        )
        await watcher.wait_for(lambda m: m.payload.get("reason") == "shutdown", count=3, within=20)
        await watcher.wait_for(
            lambda m: m.topic.endswith("/presence") and m.payload["key"]["session"] >= 2,
            count=6,
            within=20,
        )
        assert fleet.stats.connects > 20
        assert fleet.stats.abrupt_drops >= 3
        assert fleet.stats.graceful_drops >= 3


def backend_session(broker: Broker):
    import secrets

    from outpost.mqtt import aiomqtt_client

    client_id = f"test-{secrets.token_hex(4)}"
    return aiomqtt_client(broker.endpoint(client_id), client_id)
