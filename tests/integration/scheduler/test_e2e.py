"""End to end: the real bridge and the fleet simulator's devices, driven by the executor.

Devices (``device.sim.Fleet``) download from the real S3 and report over MQTT; the real
bridge (in-process) records presence, state and job status in MongoDB; the executor
reads only what the bridge wrote, including the post-upgrade check that each device
came back online on the new version.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime, time

import pytest

from api.store import rollouts as api_rollouts
from device.sim.fleet import Broker, Fleet, FleetOptions
from outpost.store import Store
from schemas.documents import DeviceDoc
from schemas.rollouts import MaintenanceWindow, RolloutSchedule, RolloutSpec
from tests.integration.bridge.helpers import running_bridge
from tests.integration.bridge.helpers import settings as bridge_settings
from tests.integration.scheduler.conftest import (
    device_ids,
    executor,
    rollout_doc,
    seed_devices,
    seed_firmware,
    status_of,
    tick_until,
)
from tests.integration.scheduler.fleet import FakeFleet, running

pytestmark = pytest.mark.integration
LOG = logging.getLogger("test.e2e")
N = 30


async def test_rollout_through_bridge_and_simulated_fleet(db, broker, mongo, s3, unique):
    options = FleetOptions(
        devices=N,
        prefix=f"e{unique}",
        firmware="1.0.0",
        hardware_model="sim-ap",
        reconnect_base=0.2,
        reconnect_cap=1.0,
    )
    now = datetime.now(UTC)
    await db["devices"].insert_many(
        [
            DeviceDoc(
                id=options.device_id(i),
                tenant_id="t1",
                group="g1",
                hardware_model="sim-ap",
                created_at=now,
            ).to_mongo()
            for i in range(N)
        ]
    )
    fw = await seed_firmware(db, s3, unique, version="2.0.0")
    job = f"job-{unique}"
    await db["rollouts"].insert_one(
        rollout_doc(job, fw, waves={"kind": "fixed", "size": 10}, grace_period="PT60S")
    )
    fleet_broker = Broker(
        "127.0.0.1", broker.port, broker.backend_username, broker.backend_password
    )
    cfg = bridge_settings(broker, mongo.url, db.name, unique)
    async with (
        running_bridge(cfg),
        Fleet(options, fleet_broker, LOG) as fleet,
        executor(db, broker, s3) as ex,
    ):
        await fleet.wait_ready(N)

        async def done() -> bool:
            return await status_of(db, job) in ("completed", "aborted", "paused")

        await tick_until(ex, done, limit_s=120)
        stats = fleet.stats
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert await status_of(db, job) == "completed"
    assert Counter(e["status"] for e in execs) == {"succeeded": N}
    assert {e["attempt"] for e in execs} == {1}
    assert stats.jobs_succeeded == N
    assert stats.jobs_failed == 0
    devices = await db["device_status"].find({"_id": {"$regex": f"^e{unique}-"}}).to_list(None)
    assert len(devices) == N
    assert {d["state"]["firmware"] for d in devices} == {"2.0.0"}


async def test_rollout_created_by_the_api_store_is_run_as_stored(db, broker, s3, unique, prefix):
    """The api writes the spec (durations in seconds, windows as text); we read it back."""
    ids = device_ids(prefix, 6)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    spec = RolloutSpec.model_validate(
        {
            "firmware": {"id": fw["_id"], "version": fw["version"]},
            "target": {"group": "g1", "tags": ["ap"]},
            "waves": {"kind": "percentage", "percent": 50},
            "success": {"min_success_percent": 100, "wait": "PT10M"},
            "grace_period": "PT30S",
            "schedule": RolloutSchedule(
                windows=(
                    MaintenanceWindow(start=time(0, 0), end=time(0, 0), timezone="Europe/Berlin"),
                )
            ),
        }
    )
    doc = await api_rollouts.create(Store(db), "t1", spec, actor="test")
    fleet = FakeFleet(db, prefix, download=False)
    async with running(fleet, broker), executor(db, broker, s3) as ex:

        async def done() -> bool:
            return await status_of(db, doc.id) == "completed"

        await tick_until(ex, done, limit_s=60)
    execs = await db["job_executions"].find({"job_id": doc.id}).to_list(None)
    assert Counter(e["wave"] for e in execs) == {1: 3, 2: 3}
    assert all(len(fleet.commands[d]) == 1 for d in ids)
