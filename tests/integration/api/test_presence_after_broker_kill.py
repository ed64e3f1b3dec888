"""After a broker SIGKILL (no Last Will is sent) the api shows the presence it stored
before as "unknown" until the device's session is back (issue 13, item 7)."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import pytest

from api.auth import Role
from deploy.local import Mosquitto, free_port
from deploy.local.process import port_is_free
from outpost.store import Insert
from schemas.documents import BROKER_EPOCHS, DEVICES, DeviceDoc
from tests.integration.api.conftest import Api
from tests.integration.bridge.helpers import (
    Publisher,
    eventually,
    presence_payload,
    running_bridge,
    settings,
)

pytestmark = pytest.mark.integration


async def test_after_a_broker_kill_presence_is_unknown_until_the_device_is_back(
    api: Api, mongo, servers_root, unique
):
    broker = Mosquitto(
        servers_root / f"mosquitto-{unique}", free_port(), backend_password=f"pw{unique}"
    )
    broker.start()
    device = f"d{unique}"
    db = api.state.db
    await db.apply(
        DEVICES,
        [
            Insert(
                DeviceDoc(
                    id=device,
                    tenant_id=f"t{unique}",
                    hardware_model="ap-1",
                    created_at=datetime.now(UTC),
                ).to_mongo()
            )
        ],
    )
    token = await api.token(f"t{unique}", Role.VIEWER)
    cfg = settings(broker, mongo.url, db.db.name, unique)
    try:
        async with running_bridge(cfg), api.client(token) as http:

            async def shown(status: str) -> bool:
                body = (await http.get(f"/devices/{device}")).json()
                return (body.get("presence") or {}).get("status") == status

            pub = Publisher(broker, f"p{unique}")
            pub.publish(f"devices/{device}/presence", presence_payload(device, 1, 1, "online"))
            await pub.flushed(10)
            pub.close()
            await eventually(lambda: shown("online"), within=20, what="online")

            pid = broker.running_pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # no Last Will: the broker is gone

            async def gone() -> bool:  # its listening socket closes as it exits
                return port_is_free(broker.port)

            await eventually(gone, within=10, what="the killed broker's port free")
            await asyncio.to_thread(broker.start)
            await eventually(lambda: shown("unknown"), within=30, what="presence unknown")
            assert await db[BROKER_EPOCHS].count_documents({}) >= 1
            listed = (await http.get("/devices", params={"online": "true"})).json()
            assert listed["items"] == []  # not vouched for: not listed as online

            pub = Publisher(broker, f"q{unique}")  # the device's session is back
            pub.publish(f"devices/{device}/presence", presence_payload(device, 2, 1, "online"))
            await pub.flushed(10)
            pub.close()
            await eventually(lambda: shown("online"), within=20, what="online again")
    finally:
        broker.stop()
