"""A device whose ordering keys went back (factory reset, no clock) is heard again after
an admin resets its keys; until then its messages are counted as skipped, not stored."""

from __future__ import annotations

import asyncio
import json

import pytest

from api.auth import Role
from schemas.documents import DEVICE_STATUS
from tests.integration.api.conftest import Api, eventually
from tests.integration.api.mqtt_clients import DeviceClient, in_thread
from tests.integration.bridge.helpers import running_bridge, settings, state_payload

pytestmark = pytest.mark.integration


async def test_reset_keys_lets_a_device_that_started_over_be_heard(api: Api, broker, mongo, unique):
    device_id = f"kr-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    db = api.state.db
    async with api.client(token) as http:
        registered = await http.post("/devices", json={"id": device_id, "hardware_model": "ap-1"})
        assert registered.status_code == 201, registered.text
        password = registered.json()["credentials"]["password"]
        device = DeviceClient("127.0.0.1", broker.port, device_id, password)
        await in_thread(device.connect)
        cfg = settings(broker, mongo.url, db.db.name, unique, known_ttl_s=0.5)
        try:
            async with running_bridge(cfg) as (_, metrics):

                def skipped_older() -> float:
                    value = metrics.registry.get_sample_value(
                        "outpost_bridge_skipped_total", {"reason": "older"}
                    )
                    return value or 0.0

                async def stored_counter() -> int | None:
                    doc = await db[DEVICE_STATUS].find_one({"_id": device_id})
                    return doc["state"]["counters"]["n"] if doc and "state" in doc else None

                topic = f"devices/{device_id}/state"
                await in_thread(device.publish, topic, state_payload(device_id, 9, 5, n=1))
                await stored_becomes(stored_counter, 1)

                # the device was reset: its keys start again at session 1, and lose
                await in_thread(device.publish, topic, state_payload(device_id, 1, 1, n=2))
                await eventually(lambda: skipped_older() >= 1)
                assert await stored_counter() == 1

                reset = await http.post(f"/devices/{device_id}/keys/reset")
                assert reset.status_code == 200, reset.text
                assert reset.json() == {"device_id": device_id, "key_epoch": 1}
                await asyncio.sleep(0.6)  # the bridge's cached facts expire (known_ttl_s)
                await in_thread(device.publish, topic, state_payload(device_id, 1, 2, n=3))
                await stored_becomes(stored_counter, 3)
                doc = await db[DEVICE_STATUS].find_one({"_id": device_id})
                assert doc["state"]["k"] == "000001:00000000000001.00000000000002"
        finally:
            device.close()
        audit = await http.get("/audit", params={"target": f"device:{device_id}"})
        entries = [e for e in audit.json()["items"] if e["action"] == "device.reset_keys"]
        assert [(json.loads(e["before"]), json.loads(e["after"])) for e in entries] == [
            ({"key_epoch": 0}, {"key_epoch": 1})
        ]


async def stored_becomes(read, expected, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while (await read()) != expected:  # noqa: ASYNC110 - polling the database
            await asyncio.sleep(0.05)
