"""Desired config: group templates, overrides, versions, If-Match, retained publishes."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import aiomqtt
import pytest

from api.auth import Role
from device.behaviour import state_message
from schemas.protocol import ConfigReport, OrderKey, encode
from tests.integration.api.conftest import Api, eventually
from tests.integration.api.mqtt_clients import DeviceClient, in_thread
from tests.integration.bridge.helpers import running_bridge
from tests.integration.bridge.helpers import settings as bridge_settings
from tests.integration.scheduler.devices import until

pytestmark = pytest.mark.integration
CH6 = {"radios": {"2.4GHz": {"channel": 6}}}


def template(channel: int) -> dict:
    return {
        "country": "US",
        "radios": {"2.4GHz": {"channel": channel}},
        "ssids": [{"name": "guest", "security": {"mode": "open"}, "bands": ["2.4GHz"]}],
    }


def channel_only(n: int) -> dict:
    return {"radios": {"2.4GHz": {"channel": n}}}


def channel(n: int) -> dict:
    return {"country": "US", "radios": {"2.4GHz": {"channel": n}}}


class ConfigWatcher:
    """Collects every message on devices/<prefix>*/config (retained ones included)."""

    def __init__(self, broker, device_ids: list[str]) -> None:
        self.broker = broker
        self.ids = device_ids
        self.messages: list[tuple[str, dict]] = []

    async def __aenter__(self) -> ConfigWatcher:
        self.client = aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            username=self.broker.backend_username,
            password=self.broker.backend_password,
            protocol=aiomqtt.ProtocolVersion.V5,
        )
        await self.client.__aenter__()
        for device_id in self.ids:
            await self.client.subscribe(f"devices/{device_id}/config", qos=1)
        self.task = asyncio.create_task(self._collect(), name="config-watcher")
        return self

    async def _collect(self) -> None:
        async for message in self.client.messages:
            device_id = str(message.topic).split("/")[1]
            self.messages.append((device_id, json.loads(message.payload)))

    async def __aexit__(self, *exc) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def settle(self, expected: int) -> None:
        """Wait for ``expected`` messages, then prove no more arrive: a probe published
        after the api answered comes back after anything the api had published."""
        await eventually(lambda: len(self.messages) >= expected)
        probe = f"devices/{self.ids[0]}/config-probe"
        await self.client.subscribe(probe, qos=1)
        before = len(self.messages)
        await self.client.publish(probe, b"{}", qos=1)
        await eventually(lambda: any(m == {} for _, m in self.messages[before:]))
        self.messages = [(d, m) for d, m in self.messages if m != {}]


async def test_group_template_change_publishes_only_changed_devices(api: Api, broker, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    ids = [f"g{n}-{unique}" for n in range(4)]
    async with api.client(token) as http:
        created = await http.post("/groups", json={"name": "lobby", "template": template(1)})
        assert created.status_code == 201
        for n, device_id in enumerate(ids):
            overrides = {"radios": {"2.4GHz": {"channel": 11}}} if n == 0 else {}
            response = await http.post(
                "/devices",
                json={
                    "id": device_id,
                    "hardware_model": "ap-1",
                    "group": "lobby",
                    "overrides": overrides,
                },
            )
            assert response.status_code == 201, response.text
        async with ConfigWatcher(broker, ids) as watcher:
            await watcher.settle(4)  # the retained v1 of each device
            assert sorted(d for d, _ in watcher.messages) == sorted(ids)
            assert all(m["version"] == 1 for _, m in watcher.messages)
            watcher.messages.clear()

            # channel change: device 0 overrides it, so only 1..3 change
            change = await http.put(
                "/groups/lobby/template",
                headers={"If-Match": '"1"'},
                json={"template": template(6)},
            )
            assert change.status_code == 200, change.text
            assert change.json()["devices_changed"] == 3
            await watcher.settle(3)
            assert sorted(d for d, _ in watcher.messages) == sorted(ids[1:])
            assert all(
                m["version"] == 2 and m["config"]["radios"]["2.4GHz"]["channel"] == 6
                for _, m in watcher.messages
            )
            watcher.messages.clear()

            # the same template again: a no-op publishes nothing
            same = await http.put(
                "/groups/lobby/template",
                headers={"If-Match": '"2"'},
                json={"template": dict(reversed(template(6).items()))},
            )
            assert same.status_code == 200
            assert same.json()["devices_changed"] == 0
            await watcher.settle(0)
            assert watcher.messages == []

            stale = await http.put(
                "/groups/lobby/template", headers={"If-Match": '"1"'}, json={"template": {}}
            )
            assert stale.status_code == 412
            missing = await http.put("/groups/lobby/template", json={"template": {}})
            assert missing.status_code == 428

        v0 = (await http.get(f"/devices/{ids[0]}/config")).json()
        assert v0["version"] == 1
        assert v0["config"]["radios"]["2.4GHz"]["channel"] == 11
        v1 = await http.get(f"/devices/{ids[1]}/config")
        assert v1.headers["etag"] == '"2"'
        assert v1.json()["config"]["radios"]["2.4GHz"]["channel"] == 6


async def test_overrides_if_match_and_rollback(api: Api, broker, mongo, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    device_id = f"o-{unique}"
    async with api.client(token) as http:
        await http.post(
            "/groups", json={"name": "g", "template": {"country": "US", "radios": {"2.4GHz": {}}}}
        )
        registered = await http.post(
            "/devices", json={"id": device_id, "hardware_model": "ap-1", "group": "g"}
        )
        password = registered.json()["credentials"]["password"]
        url = f"/devices/{device_id}/config/overrides"
        first = await http.put(url, headers={"If-Match": "1"}, json={"overrides": CH6})
        assert first.json() == {"changed": True, "version": 2, "published": True}
        stale = await http.put(url, headers={"If-Match": "1"}, json={"overrides": {}})
        assert stale.status_code == 412
        noop = await http.put(url, headers={"If-Match": "2"}, json={"overrides": CH6})
        assert noop.json() == {"changed": False, "version": 2, "published": False}
        back = await http.post(f"/devices/{device_id}/config/rollback", json={"version": 1})
        assert back.json() == {"changed": True, "version": 3, "published": True}
        current = (await http.get(f"/devices/{device_id}/config")).json()
        assert current["config"]["radios"]["2.4GHz"]["channel"] == "auto"
        assert current["version"] == 3
        history = (await http.get(f"/devices/{device_id}/config/history")).json()
        assert [h["version"] for h in history["items"]] == [3, 2, 1]
        missing = await http.post(f"/devices/{device_id}/config/rollback", json={"version": 9})
        assert missing.status_code == 404

        # out of sync, and why: the device never acknowledged, and is offline
        listed = (await http.get("/devices", params={"in_sync": "false"})).json()["items"]
        assert [(d["id"], d["sync"]["reason"]) for d in listed] == [(device_id, "offline")]
        # the device reports, with its own account; the real bridge records it
        cfg = bridge_settings(broker, mongo.url, api.state.db.db.name, unique)
        device = DeviceClient("127.0.0.1", broker.port, device_id, password)
        try:
            async with running_bridge(cfg):
                assert not (await in_thread(device.connect)).is_failure
                rejected = ConfigReport(version=3, status="rejected", error="bad channel")
                await report_config(device, device_id, rejected, seq=1)

                async def sync() -> dict:
                    return (await http.get(f"/devices/{device_id}")).json()["sync"]

                await until(lambda: _reason_is(sync, "rejected"), 30, "rejection recorded")
                assert (await sync())["error"] == "bad channel"
                await report_config(device, device_id, ConfigReport(version=3, status="applied"), 2)
                await until(lambda: _in_sync(sync), 30, "ack recorded")
        finally:
            device.close()
        synced = (await http.get("/devices", params={"in_sync": "true"})).json()["items"]
        assert [d["id"] for d in synced] == [device_id]


async def report_config(device: DeviceClient, device_id: str, ack: ConfigReport, seq: int) -> None:
    """The device's state report with this config ack, acknowledged by the broker."""
    state = state_message(
        device_id,
        OrderKey(session=1, seq=seq),
        datetime.now(UTC),
        firmware="1.0.0",
        hardware_model="ap-1",
        config=ack,
        uptime_s=seq,
    )
    puback = await in_thread(device.publish, f"devices/{device_id}/state", encode(state))
    assert not puback.is_failure


async def _reason_is(sync, reason: str) -> bool:
    return (await sync())["reason"] == reason


async def _in_sync(sync) -> bool:
    return (await sync())["in_sync"]


async def test_history_is_bounded(broker, mongo, s3, unique):
    from api.app import create_app
    from tests.integration.api.conftest import api_settings

    app = create_app(api_settings(broker, mongo, s3, f"h_{unique}", config_history=3))
    async with app.router.lifespan_context(app) as state:
        api = Api(app, state["app"])
        try:
            token = await api.token(f"t-{unique}", Role.OPERATOR)
            device_id = f"h-{unique}"
            async with api.client(token) as http:
                await http.post(
                    "/devices",
                    json={"id": device_id, "hardware_model": "m", "overrides": channel(1)},
                )
                for n in range(1, 6):
                    r = await http.put(
                        f"/devices/{device_id}/config/overrides",
                        headers={"If-Match": str(n)},
                        json={"overrides": channel(n + 1)},
                    )
                    assert r.status_code == 200, r.text
                history = (await http.get(f"/devices/{device_id}/config/history")).json()
                assert [h["version"] for h in history["items"]] == [6, 5, 4]
        finally:
            await api.state.db.db.client.drop_database(f"h_{unique}")


async def test_invalid_effective_config_is_refused_with_the_reason(api: Api, unique):
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    device_id = f"i-{unique}"
    async with api.client(token) as http:
        await http.post(
            "/groups", json={"name": "eu", "template": {"country": "DE", "radios": {"2.4GHz": {}}}}
        )
        bad = await http.post(
            "/devices",
            json={
                "id": device_id,
                "hardware_model": "m",
                "group": "eu",
                "overrides": channel_only(14),
            },
        )
        assert bad.status_code == 422
        assert "channel 14 is not allowed" in bad.json()["detail"]
        assert (await http.get(f"/devices/{device_id}")).status_code == 404
        ok = await http.post(
            "/devices",
            json={
                "id": device_id,
                "hardware_model": "m",
                "group": "eu",
                "overrides": channel_only(13),
            },
        )
        assert ok.status_code == 201
        # a template that makes a member's effective config invalid is refused whole
        refused = await http.put(
            "/groups/eu/template",
            headers={"If-Match": "1"},
            json={"template": {"country": "US", "radios": {"2.4GHz": {}}}},
        )
        assert refused.status_code == 422
        assert device_id in refused.json()["detail"]
        group = (await http.get("/groups/eu")).json()
        assert group["version"] == 1
        assert group["template"]["country"] == "DE"
