"""Admins, the bridge and the scheduler write the same devices at once; nothing is lost.

FerretDB v1 loses one of two concurrent updates of one document (outpost/store.py). The
storage rules make that harmless without reading anything back: each service writes only
documents of its own (the api ``devices``, the bridge ``device_presence``,
``device_status`` and ``job_reports``, the scheduler ``job_executions`` and
``rollout_progress``), and the api's concurrent requests on one device take turns
through revision locks
(api/store/revisions.py). Here, on the same devices and at the same time:

- four operators per device, in loops: three patch its tags, one changes its config
  (If-Match);
- a flood of presence, state and job status messages goes through the real bridge;
- the scheduler runs a rollout to all of them.

Every write each of them made must be in the database at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter

import pytest

from api.auth import Role
from schemas.documents import (
    DEVICE_CONFIGS,
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    JOB_EXECUTIONS,
    JOB_REPORTS,
    order_key_str,
)
from schemas.protocol import OrderKey
from tests.integration.api.conftest import Api
from tests.integration.bridge.helpers import (
    Publisher,
    eventually,
    presence_payload,
    running_bridge,
    settings,
    state_payload,
)
from tests.integration.scheduler.conftest import executor

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.concurrent")
DEVICES_N = 8
ROUNDS = 30  # bridge messages per device
EDITS = 6  # tag patches (per tagger) and config changes per device
TAGGERS = 3
CHANNELS = (1, 6, 11)


def _job_status(device: str, job: str, seq: int, progress: float) -> bytes:
    body = {
        "v": 1,
        "device_id": device,
        "job_id": job,
        "key": {"session": 1, "seq": seq},
        "status": "downloading",
        "progress": progress,
    }
    return json.dumps(body).encode()


async def _tagger(http, name: str, ids: list[str], done: list[tuple[str, list[str]]]) -> None:
    for n in range(EDITS):
        for device in ids:
            tags = [f"{name}-{n}"]
            patched = await http.patch(f"/devices/{device}", json={"tags": tags})
            assert patched.status_code == 200, patched.text
            done.append((device, tags))


async def _configurer(http, ids: list[str], versions: Counter[str]) -> None:
    for n in range(EDITS):
        for device in ids:
            current = await http.get(f"/devices/{device}/config")
            channel = CHANNELS[(n + 1) % len(CHANNELS)]
            changed = await http.put(
                f"/devices/{device}/config/overrides",
                headers={"If-Match": current.headers["ETag"]},
                json={"overrides": {"radios": {"2.4GHz": {"channel": channel}}}},
            )
            assert changed.status_code == 200, changed.text
            assert changed.json()["changed"]
            versions[device] += 1


async def test_admins_bridge_and_scheduler_on_the_same_devices_lose_no_write(
    api: Api, broker, mongo, s3, unique
):
    db = api.state.db
    ids = [f"busy-{unique}-{i}" for i in range(DEVICES_N)]
    token = await api.token(f"t-{unique}", Role.OPERATOR)
    async with api.client(token) as http:
        group = {"name": "g", "template": {"country": "US", "radios": {"2.4GHz": {}}}}
        assert (await http.post("/groups", json=group)).status_code == 201
        for device in ids:
            body = {"id": device, "hardware_model": "ap-1", "group": "g"}
            assert (await http.post("/devices", json=body)).status_code == 201
        fw = await http.post("/firmware", json={"version": "2.0.0", "hardware_models": ["ap-1"]})
        fw_id = fw.json()["id"]
        uploaded = await http.put(f"/firmware/{fw_id}/image", content=b"\x7fimage" * 100)
        assert uploaded.status_code == 200, uploaded.text
        rollout = await http.post(
            "/rollouts",
            json={
                "firmware": {"id": fw_id, "version": "2.0.0"},
                "target": {"group": "g"},
                "waves": {"kind": "fixed", "size": DEVICES_N},
                "in_progress_timeout": "PT1H",
            },
        )
        assert rollout.status_code == 201, rollout.text
        job = rollout.json()["id"]

        pub = Publisher(broker, f"p{unique}")
        tags_written: list[tuple[str, list[str]]] = []
        configs_written: Counter[str] = Counter()
        try:
            async with (
                running_bridge(settings(broker, mongo.url, db.db.name, unique)),
                executor(db.db, broker, s3) as scheduler,
            ):
                for device in ids:
                    pub.publish(
                        f"devices/{device}/presence", presence_payload(device, 1, 1, "online")
                    )

                async def flood() -> None:
                    for seq in range(2, ROUNDS + 2):
                        for device in ids:
                            payload = state_payload(device, 1, seq, n=seq)
                            pub.publish(f"devices/{device}/state", payload)
                        await asyncio.sleep(0.02)

                async def schedule() -> None:
                    while (
                        await db[JOB_EXECUTIONS].count_documents(
                            {"job_id": job, "sent_at": {"$ne": None}}
                        )
                        < DEVICES_N
                    ):
                        await scheduler.tick()
                        await asyncio.sleep(0.1)

                async with asyncio.TaskGroup() as writers:
                    writers.create_task(flood(), name="bridge flood")
                    writers.create_task(schedule(), name="scheduler")
                    for t in range(TAGGERS):
                        tagger = _tagger(http, f"a{t}", ids, tags_written)
                        writers.create_task(tagger, name=f"tagger {t}")
                    writers.create_task(_configurer(http, ids, configs_written), name="config")
                last = ROUNDS + 2
                for device in ids:  # the devices answer the job commands they received
                    pub.publish(
                        f"devices/{device}/jobs/{job}/status", _job_status(device, job, last, 40)
                    )
                await pub.flushed(30)

                async def reported() -> bool:
                    return await db[JOB_REPORTS].count_documents({"job_id": job}) == DEVICES_N

                await eventually(reported, within=30, what="every job report stored")
        finally:
            pub.close()

    # the bridge's writes: the newest state and job report of every device
    statuses = {d["_id"]: d for d in await db[DEVICE_STATUS].find({"_id": {"$in": ids}}).to_list()}
    assert {d: s["state"]["counters"] for d, s in statuses.items()} == {
        d: {"n": ROUNDS + 1} for d in ids
    }
    newest = order_key_str(OrderKey(session=1, seq=ROUNDS + 1))
    assert {s["state"]["k"] for s in statuses.values()} == {newest}
    present = await db[DEVICE_PRESENCE].find({"_id": {"$in": ids}}).to_list()
    assert len(present) == DEVICES_N
    assert {p["presence"]["status"] for p in present} == {"online"}
    reports = await db[JOB_REPORTS].find({"job_id": job}).to_list()
    assert {r["progress"] for r in reports} == {40}

    # the api's writes: every revision landed, in order, none lost or applied twice
    registry = {d["_id"]: d for d in await db[DEVICES].find({"_id": {"$in": ids}}).to_list()}
    assert len(tags_written) == DEVICES_N * TAGGERS * EDITS
    for device in ids:
        doc = registry[device]
        assert doc["tags"] in [tags for d, tags in tags_written if d == device]
        assert doc["desired_config"]["version"] == 1 + configs_written[device] == 1 + EDITS
        # registration (0), its group config (1), then one revision per admin write: a
        # lost update (two writers of one revision) would leave it lower
        assert doc["rev"] == 1 + TAGGERS * EDITS + EDITS
    history = await db[DEVICE_CONFIGS].count_documents({"device_id": {"$in": ids}})
    assert history == DEVICES_N * (1 + EDITS)

    # the scheduler's writes: one sent execution per device
    executions = await db[JOB_EXECUTIONS].find({"job_id": job}).to_list()
    assert sorted(e["device_id"] for e in executions) == sorted(ids)
    assert all(e["sent_at"] is not None and e["attempt"] == 1 for e in executions)
