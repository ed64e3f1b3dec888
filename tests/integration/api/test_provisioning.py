"""Zero-touch provisioning against the real broker and database: claims, the exchange,
refusals, races, and the ACL a provisioned device gets."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator

import pytest

from api.app import create_app
from api.auth import Role
from device.provisioning import provision
from outpost.mqtt import Endpoint
from outpost.sealing import IdentityKey
from tests.integration.api.conftest import Api, api_settings, eventually
from tests.integration.api.mqtt_clients import DeviceClient, in_thread

pytestmark = pytest.mark.integration

TEMPLATE = {"country": "DE", "radios": {"2.4GHz": {"channel": 6}}}


@pytest.fixture
async def papi(broker, mongo, s3, unique) -> AsyncIterator[Api]:
    """The api with a provisioning share group of its own (no other test's api answers)."""
    database = f"api_{secrets.token_hex(5)}"
    settings = api_settings(
        broker,
        mongo,
        s3,
        database,
        provision_share_group=f"p-{unique}",
        provision_serial_burst=3,
        device_broker_url="mqtts://devices.example.net:8883",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        handle = Api(app, state["app"])
        await eventually(lambda: handle.state.link.connected)
        try:
            yield handle
        finally:
            await handle.state.db.db.client.drop_database(database)


def endpoint(broker) -> Endpoint:
    return Endpoint("127.0.0.1", broker.tls_port, tls=True, ca_file=str(broker.ca_file))


async def make_claim(http, **body) -> dict:
    response = await http.post("/claims", json={"name": "batch", **body})
    assert response.status_code == 201, response.text
    return response.json()


def counted(api: Api, result: str) -> float:
    value = api.state.metrics.registry.get_sample_value(
        "outpost_api_provisioning_total", {"result": result}
    )
    return value or 0.0


async def test_a_device_provisions_and_gets_its_group_config(papi: Api, broker, unique):
    token = await papi.token(f"t-{unique}", Role.ADMIN)
    async with papi.client(token) as http:
        made = await http.post("/groups", json={"name": "lobby", "template": TEMPLATE})
        assert made.status_code == 201, made.text
        claim = await make_claim(http, group="lobby", tags=["site:b"], allow=[f"SN-{unique}"])
        identity = await provision(
            endpoint(broker), claim["secret"], f"SN-{unique}", "ap-1", IdentityKey()
        )
        assert identity.broker_url == "mqtts://devices.example.net:8883"
        assert identity.tenant_id == f"t-{unique}"
        device = (await http.get(f"/devices/{identity.device_id}")).json()
        assert (device["group"], device["tags"]) == ("lobby", ["site:b"])
        config = (await http.get(f"/devices/{identity.device_id}/config")).json()
    me = DeviceClient("127.0.0.1", broker.port, identity.username, identity.password)
    got: list[bytes] = []
    me.client.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    try:
        assert not (await in_thread(me.connect)).is_failure
        assert (await in_thread(me.subscribe, f"devices/{identity.device_id}/config")).value == 1
        await eventually(lambda: got, within=10)
    finally:
        me.close()
    assert json.loads(got[0])["hash"] == config["hash"]
    assert counted(papi, "new") == 1
