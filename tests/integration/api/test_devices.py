"""Device registry against the real broker: credentials, ACL, rotation, decommission."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from api.auth import Role
from tests.integration.api.conftest import Api
from tests.integration.api.mqtt_clients import DeviceClient, in_thread
from tests.integration.bridge.helpers import running_bridge
from tests.integration.bridge.helpers import settings as bridge_settings
from tests.integration.scheduler.devices import until

pytestmark = pytest.mark.integration


async def register(client, device_id: str, **extra) -> dict:
    body = {"id": device_id, "hardware_model": "ap-1", **extra}
    response = await client.post("/devices", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def presence(device_id: str) -> bytes:
    return json.dumps(
        {"v": 1, "device_id": device_id, "key": {"session": 1, "seq": 1}, "status": "online"}
    ).encode()


async def test_registered_device_is_confined_to_its_subtree(api: Api, broker, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        me = await register(http, f"dev-{unique}-a")
        other = await register(http, f"dev-{unique}-b")
    creds = me["credentials"]
    assert creds["username"] == f"dev-{unique}-a"
    stored = await api.state.db["devices"].find_one({"_id": f"dev-{unique}-a"})
    assert creds["password"] not in json.dumps(stored, default=str)

    device = DeviceClient("127.0.0.1", broker.port, creds["username"], creds["password"])
    try:
        assert not (await in_thread(device.connect)).is_failure
        own = f"devices/{creds['username']}/presence"
        assert not (await in_thread(device.publish, own, presence(creds["username"]))).is_failure
        theirs = f"devices/{other['device']['id']}/presence"
        assert (await in_thread(device.publish, theirs, b"{}")).is_failure
        assert (await in_thread(device.subscribe, f"devices/{other['device']['id']}/#")).is_failure
        assert (await in_thread(device.subscribe, "devices/#")).is_failure
        assert not (await in_thread(device.subscribe, f"devices/{creds['username']}/#")).is_failure
    finally:
        device.close()


async def test_wrong_password_and_other_client_id_are_refused(api: Api, broker, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        me = await register(http, f"dev-{unique}")
    device = DeviceClient("127.0.0.1", broker.port, me["credentials"]["username"], "wrong")
    try:
        assert (await in_thread(device.connect)).is_failure
    finally:
        device.close()


async def test_rotate_then_decommission(api: Api, broker, unique):
    device_id = f"dev-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        old = (await register(http, device_id))["credentials"]["password"]
        rotated = await http.post(f"/devices/{device_id}/credentials")
        assert rotated.status_code == 200
        new = rotated.json()["password"]
        refused = DeviceClient("127.0.0.1", broker.port, device_id, old)
        try:
            assert (await in_thread(refused.connect)).is_failure
        finally:
            refused.close()
        device = DeviceClient("127.0.0.1", broker.port, device_id, new)
        assert not (await in_thread(device.connect)).is_failure
        topic = f"devices/{device_id}/presence"
        assert not (await in_thread(device.publish, topic, presence(device_id), True)).is_failure
        try:
            gone = await http.delete(f"/devices/{device_id}")
            assert gone.status_code == 204
            await in_thread(device.disconnected.wait, 5)
            assert device.disconnected.is_set(), "decommission must disconnect the device"
        finally:
            device.close()
        again = DeviceClient("127.0.0.1", broker.port, device_id, new)
        try:
            assert (await in_thread(again.connect)).is_failure
        finally:
            again.close()
        # history kept: still readable, marked decommissioned, absent from the live list
        kept = await http.get(f"/devices/{device_id}")
        assert kept.status_code == 200
        assert kept.json()["decommissioned_at"]
        listed = await http.get("/devices")
        assert device_id not in [d["id"] for d in listed.json()["items"]]
    await assert_no_retained(broker, topic)


async def assert_no_retained(broker, topic: str) -> None:
    """The retained presence was cleared: a fresh subscriber gets nothing retained."""
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as watcher:
        await watcher.subscribe(topic, qos=1)
        marker = f"{topic}-probe"
        # a probe on a sibling topic proves the retained one would have arrived first
        await watcher.subscribe(marker, qos=1)
        await watcher.publish(marker, b"x", qos=1)
        async with asyncio.timeout(5):
            async for message in watcher.messages:
                assert str(message.topic) != topic, f"retained {message.payload!r} left"
                break


async def test_duplicate_id_and_bad_id(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        await register(http, f"dev-{unique}")
        again = await http.post("/devices", json={"id": f"dev-{unique}", "hardware_model": "x"})
        assert again.status_code == 409
        assert again.headers["content-type"] == "application/problem+json"
        bad = await http.post("/devices", json={"id": "Bad_Id!", "hardware_model": "x"})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["loc"][-1] == "id"


async def test_list_filters_sort_and_pagination(api: Api, broker, mongo, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        passwords = {}
        for n in range(5):
            got = await register(
                http,
                f"d{n}-{unique}",
                tags=["even"] if n % 2 == 0 else ["odd"],
                hardware_model="ap-2" if n == 4 else "ap-1",
            )
            passwords[n] = got["credentials"]["password"]
        # d1 comes online with its own account; the real bridge records it
        online_id = f"d1-{unique}"
        cfg = bridge_settings(broker, mongo.url, api.state.db.db.name, unique)
        device = DeviceClient("127.0.0.1", broker.port, online_id, passwords[1])
        try:
            async with running_bridge(cfg):
                assert not (await in_thread(device.connect)).is_failure
                own = f"devices/{online_id}/presence"
                assert not (await in_thread(device.publish, own, presence(online_id))).is_failure

                async def recorded() -> bool:
                    one = (await http.get(f"/devices/{online_id}")).json()
                    return (one["presence"] or {}).get("status") == "online"

                await until(recorded, 30, "presence recorded")
        finally:
            device.close()
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/devices", params=params)).json()
            seen += [d["id"] for d in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(seen)
        assert len(seen) == 5
        desc = (await http.get("/devices", params={"sort": "-id"})).json()["items"]
        assert [d["id"] for d in desc] == sorted(seen, reverse=True)
        even = (await http.get("/devices", params={"tag": "even"})).json()["items"]
        assert {d["id"] for d in even} == {f"d0-{unique}", f"d2-{unique}", f"d4-{unique}"}
        online = (await http.get("/devices", params={"online": "true"})).json()["items"]
        assert [d["id"] for d in online] == [f"d1-{unique}"]
        model = (await http.get("/devices", params={"hardware_model": "ap-2"})).json()
        assert [d["id"] for d in model["items"]] == [f"d4-{unique}"]
        bad = await http.get("/devices", params={"cursor": "garbage!"})
        assert bad.status_code == 422
        bad_sort = await http.get("/devices", params={"sort": "password"})
        assert bad_sort.status_code == 422
