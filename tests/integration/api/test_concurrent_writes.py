"""Admin writes to a device the bridge is writing at the same time survive, and so do the
bridge's.

On FerretDB an update undoes a concurrent update of the same document (outpost.mongo);
measured before the read-back: 32 to 36 of 40 admin writes lost. Here the bridge's own
writer (decode, plan, MongoSink: the code ``outpost bridge`` runs, minus MQTT) stores
a new presence of the device continuously while an operator patches its tags and moves
its config through the api. On MongoDB the same test checks the plain path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

import pytest

from api.auth import Role
from bridge.batch import plan, with_known
from bridge.inbound import Inbound
from bridge.mongo_sink import MongoSink
from outpost.mongo import is_ferretdb
from schemas.documents import order_key_str
from schemas.protocol import OrderKey
from tests.integration.api.conftest import Api

pytestmark = pytest.mark.integration
ADMINS = 8  # concurrent patch loops: enough that unverified bridge writes get lost
LOG = logging.getLogger("test.concurrent")


def _presence(device_id: str, seq: int) -> Inbound:
    body = {
        "v": 1,
        "device_id": device_id,
        "key": {"session": 1, "seq": seq},
        "status": "online" if seq % 2 else "offline",
    }
    return Inbound(
        f"devices/{device_id}/presence",
        json.dumps(body).encode(),
        seq,
        1,
        True,
        1,
        datetime.now(UTC),
        time.monotonic(),
    )


async def test_admin_and_bridge_writes_to_one_device_both_survive(api: Api, unique):
    db = api.state.db
    device_id = f"busy-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    # The bridge here does not read its writes back: it writes as fast as it can.
    sink = MongoSink(db, chunk=24, dead_letter_cap=10, verify_rounds=0)
    stop = asyncio.Event()
    bridge_writes, last_seq = [0], [0]

    async def bridge() -> None:
        while not stop.is_set():
            last_seq[0] += 1
            counts = await sink.write(
                with_known(plan([_presence(device_id, last_seq[0])]), {device_id})
            )
            bridge_writes[0] += counts.modified

    async with api.client(token) as http:
        await http.post(
            "/groups", json={"name": "g", "template": {"country": "US", "radios": {"2.4GHz": {}}}}
        )
        created = await http.post(
            "/devices", json={"id": device_id, "hardware_model": "ap-1", "group": "g"}
        )
        assert created.status_code == 201, created.text
        writer = asyncio.create_task(bridge())
        lost_tags, versions = [], []
        try:
            for i in range(12):
                before = bridge_writes[0]
                patched = await http.patch(f"/devices/{device_id}", json={"tags": [f"t{i}"]})
                assert patched.status_code == 200, patched.text
                await asyncio.sleep(0.3)  # the bridge goes on writing meanwhile
                stored = await db["devices"].find_one({"_id": device_id})
                if stored.get("tags") != [f"t{i}"]:
                    lost_tags.append(i)
                assert bridge_writes[0] > before  # the two really wrote at the same time
            assert lost_tags == []
            for i in range(1, 5):
                moved = await http.put(
                    f"/devices/{device_id}/config/overrides",
                    headers={"If-Match": str(i)},
                    json={"overrides": {"radios": {"2.4GHz": {"channel": i}}}},
                )
                assert moved.status_code == 200, moved.text
                versions.append(moved.json()["version"])
                await asyncio.sleep(0.3)
                stored = await db["devices"].find_one({"_id": device_id})
                assert stored["desired_config"]["version"] == versions[-1]
        finally:
            stop.set()
            await writer
        assert versions == [2, 3, 4, 5]
    last = await db["devices"].find_one({"_id": device_id})
    assert last["presence"]["k"] == order_key_str(OrderKey(session=1, seq=last_seq[0]))


async def test_bridge_writes_survive_an_admin_patching_the_device_continuously(api: Api, unique):
    db = api.state.db
    device_id = f"busy2-{unique}"
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    ferret = await is_ferretdb(db)
    sink = MongoSink(db, chunk=24, dead_letter_cap=10, verify_rounds=5 if ferret else 0)
    stop = asyncio.Event()
    patches = [0]

    async with api.client(token) as http:
        created = await http.post("/devices", json={"id": device_id, "hardware_model": "ap-1"})
        assert created.status_code == 201, created.text

        async def admin() -> None:
            while not stop.is_set():
                patches[0] += 1
                patched = await http.patch(
                    f"/devices/{device_id}", json={"tags": [f"t{patches[0]}"]}
                )
                assert patched.status_code == 200, patched.text

        writers = [asyncio.create_task(admin()) for _ in range(ADMINS)]
        lost = []
        try:
            for seq in range(1, 21):
                before = patches[0]
                await sink.write(with_known(plan([_presence(device_id, seq)]), {device_id}))
                await asyncio.sleep(0.3)  # the admin goes on patching meanwhile
                stored = await db["devices"].find_one({"_id": device_id})
                if stored["presence"]["k"] != order_key_str(OrderKey(session=1, seq=seq)):
                    lost.append(seq)
                assert patches[0] > before
        finally:
            stop.set()
            await asyncio.gather(*writers)
        assert lost == []
