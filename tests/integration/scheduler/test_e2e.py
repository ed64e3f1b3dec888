"""End to end: registered simulated devices, the real bridge and the executor.

The health gate: the executor trusts no device's word alone. A device that reports
success and never comes back online, and one that reports success and comes back on
its old image, both fail once the grace period is over; the others pass.
"""

from __future__ import annotations

from collections import Counter
from datetime import time

import pytest

from api.store import rollouts as api_rollouts
from device.behaviour import Fault
from outpost.store import Store
from schemas.rollouts import MaintenanceWindow, RolloutSchedule, RolloutSpec
from tests.integration.scheduler.conftest import (
    device_ids,
    executor,
    rollout_doc,
    seed_firmware,
    status_of,
    tick_until,
)
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration
N = 10


async def test_health_gate_fails_a_device_not_back_and_one_back_on_the_old_image(
    db, broker, mongo, s3, unique, prefix
):
    gone, old = device_ids(prefix, 2)
    fw = await seed_firmware(db, s3, unique, version="2.0.0")
    job = f"job-{unique}"
    await db["rollouts"].insert_one(
        rollout_doc(
            job,
            fw,
            waves={"kind": "fixed", "size": N},
            success={"min_success_percent": 50},
            # Honest devices report success only once back on the new image, so the
            # grace period bounds only how long the two liars are given.
            grace_period="PT10S",
        )
    )
    faults = {gone: Fault.NO_RETURN, old: Fault.OLD_IMAGE}
    async with (
        online_fleet(
            db, broker, mongo, s3, unique, N, prefix=prefix, firmware="1.0.0", faults=faults
        ) as rig,
        executor(db, broker, s3) as ex,
    ):

        async def done() -> bool:
            return await status_of(db, job) in ("completed", "aborted", "paused")

        await tick_until(ex, done, limit_s=120)
        stats = rig.fleet.stats
        recorded = await rig.statuses()
    execs = {e["device_id"]: e for e in await db["job_executions"].find({"job_id": job}).to_list()}
    assert await status_of(db, job) == "completed"
    assert {d: e["status"] for d, e in execs.items()} == {
        d: "failed" if d in faults else "succeeded" for d in rig.ids
    }
    for d in faults:
        assert "not back online on the new version" in execs[d]["reason"]
    assert stats.jobs_failed == 0  # every device said it succeeded
    reports = {r["device_id"]: r for r in await db["job_reports"].find({"job_id": job}).to_list()}
    assert {r["status"] for r in reports.values()} == {"succeeded"}
    # what the bridge recorded: the one gone, the other back on 1.0.0, the rest on 2.0.0
    assert recorded[gone]["presence"]["status"] == "offline"
    assert recorded[gone]["presence"].get("reason") == "connection_lost"
    assert recorded[old]["presence"]["status"] == "online"
    assert recorded[old]["state"]["firmware"] == "1.0.0"
    healthy = [d for d in rig.ids if d not in faults]
    assert Counter(recorded[d]["state"]["firmware"] for d in healthy) == {"2.0.0": N - 2}


async def test_rollout_created_by_the_api_store_is_run_as_stored(
    db, broker, mongo, s3, unique, prefix
):
    """The api writes the spec (durations in seconds, windows as text); we read it back."""
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
    async with online_fleet(db, broker, mongo, s3, unique, 6, prefix=prefix, group="g1") as rig:
        doc = await api_rollouts.create(Store(db), "t1", spec, actor="test")
        async with executor(db, broker, s3) as ex:

            async def done() -> bool:
                return await status_of(db, doc.id) == "completed"

            await tick_until(ex, done, limit_s=90)
        await rig.commands.flush()
        commands = rig.commands.commands
    execs = await db["job_executions"].find({"job_id": doc.id}).to_list(None)
    assert Counter(e["wave"] for e in execs) == {1: 3, 2: 3}
    assert {d: len(commands[d]) for d in rig.ids} == dict.fromkeys(rig.ids, 1)
    assert Counter(e["status"] for e in execs) == {"succeeded": 6}
