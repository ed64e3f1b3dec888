"""``OUTPOST_API_BROKER_ACCOUNTS``: who keeps device accounts at the broker.

``dynsec`` (the default): registration creates the device's account at Mosquitto, which
then accepts its CONNECT. ``external`` (a broker whose accounts are managed elsewhere,
e.g. mochi-mqtt in the scale-out drill, EMQX with its own authentication): the api
registers, rotates and decommissions the device in its registry only and sends the
broker nothing, so the same Mosquitto refuses that device's CONNECT.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from api.app import create_app
from api.auth import Role
from tests.integration.api.conftest import Api, api_settings, eventually
from tests.integration.api.mqtt_clients import DeviceClient

pytestmark = pytest.mark.integration


async def _accepted(broker, device_id: str, password: str) -> bool:
    """Whether Mosquitto accepts the device's CONNECT (client id = username = device id)."""
    device = DeviceClient("127.0.0.1", broker.port, device_id, password)
    try:
        return not (await asyncio.to_thread(device.connect)).is_failure
    finally:
        await asyncio.to_thread(device.close)


async def test_external_accounts_leave_the_broker_alone(api, broker, mongo, s3):
    database = f"api_{secrets.token_hex(5)}"
    app = create_app(api_settings(broker, mongo, s3, database, broker_accounts="external"))
    ours, theirs = f"acct-{secrets.token_hex(3)}", f"acct-{secrets.token_hex(3)}"
    async with app.router.lifespan_context(app) as state:
        external = Api(app, state["app"])
        await eventually(lambda: external.state.link.connected)
        try:
            async with external.client(await external.token("t1", Role.ADMIN)) as http:
                created = await http.post("/devices", json={"id": theirs, "hardware_model": "m"})
                assert created.status_code == 201, created.text
                password = created.json()["credentials"]["password"]
                assert not await _accepted(broker, theirs, password)
                rotated = await http.post(f"/devices/{theirs}/credentials")
                assert rotated.status_code == 200, rotated.text
                assert (await http.delete(f"/devices/{theirs}")).status_code == 204
        finally:
            await external.state.db.db.client.drop_database(database)
    # the default api, same broker: its registration is an account Mosquitto accepts
    async with api.client(await api.token("t1", Role.ADMIN)) as http:
        created = await http.post("/devices", json={"id": ours, "hardware_model": "m"})
        assert created.status_code == 201, created.text
        password = created.json()["credentials"]["password"]
        assert await _accepted(broker, ours, password)
        assert (await http.delete(f"/devices/{ours}")).status_code == 204
