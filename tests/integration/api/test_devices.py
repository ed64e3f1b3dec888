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
from tests.integration.device.conftest import backend_client
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


NOT_AUTHORIZED = 135  # MQTT v5 reason code in PUBACK and SUBACK

# (topic, allowed) with {me} and {other} filled in: a device sends only its presence,
# state, job status and command results, and subscribes only to its config, jobs and
# commands; it can neither publish on its own command channel nor answer on another
# device's result topic
PUBLISH_ACL = [
    ("devices/{me}/presence", True),
    ("devices/{me}/state", True),
    ("devices/{me}/jobs/j1/status", True),
    ("devices/{me}/commands/c1/result", True),
    ("devices/{me}/commands/c1", False),
    ("devices/{other}/commands/c1/result", False),
    ("devices/{other}/commands/c1", False),
    ("devices/{me}/config", False),
    ("devices/{me}/jobs/j1", False),
    ("devices/{me}/other", False),
    ("devices/{other}/presence", False),
    ("devices/{other}/state", False),
    ("devices/{other}/jobs/j1/status", False),
    ("devices/{other}/config", False),
    ("$CONTROL/dynamic-security/v1", False),
    ("elsewhere", False),
]
SUBSCRIBE_ACL = [
    ("devices/{me}/config", True),
    ("devices/{me}/jobs/+", True),
    ("devices/{me}/jobs/j1", True),
    ("devices/{me}/commands/+", True),
    ("devices/{me}/commands/+/result", False),
    ("devices/{other}/commands/+", False),
    ("devices/{me}/presence", False),
    ("devices/{me}/state", False),
    ("devices/{me}/jobs/+/status", False),
    ("devices/{me}/#", False),
    ("devices/{other}/config", False),
    ("devices/{other}/jobs/+", False),
    ("devices/+/config", False),
    ("devices/#", False),
    ("$SYS/#", False),
    ("$CONTROL/dynamic-security/#", False),
]


async def test_registered_device_is_confined_to_its_own_channels(api: Api, broker, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        me = await register(http, f"dev-{unique}-a")
        other = await register(http, f"dev-{unique}-b")
    creds = me["credentials"]
    assert creds["username"] == f"dev-{unique}-a"
    stored = await api.state.db["devices"].find_one({"_id": f"dev-{unique}-a"})
    assert creds["password"] not in json.dumps(stored, default=str)
    names = {"me": creds["username"], "other": other["device"]["id"]}

    device = DeviceClient("127.0.0.1", broker.port, creds["username"], creds["password"])
    try:
        assert not (await in_thread(device.connect)).is_failure
        published = {}
        for pattern, _ in PUBLISH_ACL:
            where = pattern.format(**names)
            published[pattern] = (
                await in_thread(device.publish, where, presence(names["me"]))
            ).value
        subscribed = {}
        for pattern, _ in SUBSCRIBE_ACL:
            subscribed[pattern] = (await in_thread(device.subscribe, pattern.format(**names))).value
    finally:
        device.close()
    # accepted (0, or 16 "no matching subscribers") or refused as not authorized
    outcome = {p: "accepted" if code < 128 else code for p, code in published.items()}
    assert outcome == {p: "accepted" if ok else NOT_AUTHORIZED for p, ok in PUBLISH_ACL}
    # granted QoS 1 or refused as not authorized
    assert subscribed == {p: 1 if ok else NOT_AUTHORIZED for p, ok in SUBSCRIBE_ACL}


@pytest.mark.parametrize("has_config", [True, False])
async def test_rotation_replaces_a_forged_retained_config(api: Api, broker, unique, has_config):
    """A config someone retained on the device's topic (with a leaked or older, broader
    account) is gone once the credentials are rotated: the api's own version is back, or
    no retained config at all for a device that has none."""
    device_id = f"dev-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        group = None
        if has_config:
            group = "g"
            template = {"country": "US", "radios": {"2.4GHz": {}}}
            made = await http.post("/groups", json={"name": group, "template": template})
            assert made.status_code == 201, made.text
        await register(http, device_id, group=group)
        forged = {"v": 1, "version": 99, "hash": "0" * 64, "issued_at": "2026-01-01T00:00:00Z"}
        async with backend_client(broker) as backend:
            await backend.publish(
                f"devices/{device_id}/config", json.dumps(forged).encode(), qos=1, retain=True
            )
        assert (await retained_config(broker, device_id))["version"] == 99
        rotated = await http.post(f"/devices/{device_id}/credentials")
        assert rotated.status_code == 200
        config = await http.get(f"/devices/{device_id}/config")
    if has_config:
        retained = await retained_config(broker, device_id)
        assert (retained["version"], retained["hash"]) == (1, config.json()["hash"])
    else:
        await assert_no_retained(broker, f"devices/{device_id}/config")


async def retained_config(broker, device_id: str) -> dict:
    async with backend_client(broker) as watcher:
        await watcher.subscribe(f"devices/{device_id}/config", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(watcher.messages))
    assert message.retain
    return json.loads(message.payload)


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
