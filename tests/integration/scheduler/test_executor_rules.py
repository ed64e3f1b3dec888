"""Rate limits, exponential rate, offline devices, pause/resume/cancel (injected clock).

The devices are real (registered, simulated, recorded by the bridge) and silent: they
take their command and never answer, so what is counted is what the executor sent.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from device.behaviour import Fault
from tests.integration.scheduler.conftest import (
    control,
    device_ids,
    executor,
    progress_of,
    rollout_doc,
    seed_firmware,
    status_of,
    tick_until,
)
from tests.integration.scheduler.devices import Rig, online_fleet

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


async def sent_in_db(db, job: str) -> int:
    return await db["job_executions"].count_documents({"job_id": job, "sent_at": {"$ne": None}})


async def setup(db, s3, unique, **spec):
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw, **spec))
    return job


def silent_fleet(db, broker, mongo, s3, unique, prefix, n):
    faults = dict.fromkeys(device_ids(prefix, n), Fault.SILENT)
    return online_fleet(db, broker, mongo, s3, unique, n, prefix=prefix, faults=faults)


async def received(rig: Rig, n: int) -> bool:
    return rig.commands.total() >= n


async def test_max_per_minute_caps_a_large_wave(db, broker, mongo, s3, unique, prefix):
    job = await setup(db, s3, unique, max_per_minute=12, waves={"kind": "fixed", "size": 30})
    clock = FakeClock()
    async with (
        silent_fleet(db, broker, mongo, s3, unique, prefix, 30) as rig,
        executor(db, broker, s3, clock=clock) as ex,
    ):
        await ex.tick()
        await ex.tick()
        assert await sent_in_db(db, job) == 12
        clock.now += timedelta(seconds=59)
        await ex.tick()
        assert await sent_in_db(db, job) == 12
        clock.now += timedelta(seconds=1)
        await ex.tick()
        assert await sent_in_db(db, job) == 24
        await tick_until(ex, lambda: received(rig, 24))
        await rig.commands.flush()
        assert rig.commands.total() == 24


async def test_exponential_rate_grows_with_notified_devices(db, broker, mongo, s3, unique, prefix):
    job = await setup(
        db,
        s3,
        unique,
        waves={
            "kind": "exponential",
            "base_rate_per_minute": 4,
            "increment_factor": 2,
            "notified_devices": 4,
        },
    )
    clock = FakeClock()
    totals = []
    async with (
        silent_fleet(db, broker, mongo, s3, unique, prefix, 40) as rig,
        executor(db, broker, s3, clock=clock) as ex,
    ):
        for _ in range(3):
            await ex.tick()
            await ex.tick()  # a second tick in the same minute adds nothing
            totals.append(await sent_in_db(db, job))
            clock.now += timedelta(minutes=1)
        await rig.commands.flush()
        assert rig.commands.reached(rig.ids) == 40
    # minute 1: 4/min; 4 notified -> 8/min; 12 notified -> 4 * 2**3 = 32/min
    assert totals == [4, 12, 40]


async def test_offline_device_waits_and_is_sent_when_back(db, broker, mongo, s3, unique, prefix):
    await setup(db, s3, unique, success={"min_success_percent": 0})
    clock = FakeClock()
    async with (
        silent_fleet(db, broker, mongo, s3, unique, prefix, 3) as rig,
        executor(db, broker, s3, clock=clock) as ex,
    ):
        away = rig.ids[0]
        await rig.go_offline([away])  # its goodbye, recorded offline by the bridge
        await ex.tick()
        await tick_until(ex, lambda: received(rig, 2))
        clock.now += timedelta(minutes=5)
        await ex.tick()
        ex_doc = await db["job_executions"].find_one({"device_id": away})
        assert ex_doc["status"] == "queued"  # still offline: pending, not skipped
        assert ex_doc["tries"] >= 2
        assert ex_doc["sent_at"] is None
        await rig.come_back([away])
        clock.now += timedelta(minutes=3)  # past the capped backoff
        await tick_until(ex, lambda: received(rig, 3))
        await rig.commands.flush()
        commands = rig.commands.commands
    assert [r.execution for r in commands[away]] == [1]
    assert {d: len(commands[d]) for d in rig.ids} == dict.fromkeys(rig.ids, 1)


async def test_pause_resume_and_cancel_take_effect_at_the_next_tick(
    db, broker, mongo, s3, unique, prefix
):
    job = await setup(db, s3, unique, max_per_minute=5, waves={"kind": "fixed", "size": 20})
    clock = FakeClock()
    async with (
        silent_fleet(db, broker, mongo, s3, unique, prefix, 20) as rig,
        executor(db, broker, s3, clock=clock) as ex,
    ):
        await ex.tick()
        assert await sent_in_db(db, job) == 5
        await control(db, job, "paused")
        clock.now += timedelta(minutes=1)
        await ex.tick()
        assert await sent_in_db(db, job) == 5
        await control(db, job, "running")
        await ex.tick()
        assert await sent_in_db(db, job) == 10
        await control(db, job, "canceled")
        clock.now += timedelta(minutes=1)
        await ex.tick()
        await ex.tick()
        assert await status_of(db, job) == "canceled"
        assert await sent_in_db(db, job) == 10
        await tick_until(ex, lambda: received(rig, 10))
        await rig.commands.flush()
        assert rig.commands.total() == 10
    counts = {
        s: await db["job_executions"].count_documents({"job_id": job, "status": s})
        for s in ("queued", "canceled")
    }
    assert counts == {"queued": 10, "canceled": 10}  # the 10 sent run to their end


async def test_invalid_rollout_or_missing_firmware_aborts_with_a_reason(
    db, broker, mongo, s3, unique, prefix
):
    job = await setup(db, s3, unique)
    await db["rollouts"].insert_one(
        {
            "_id": f"bad-{unique}",
            "tenant_id": "t1",
            "status": "running",
            "firmware": {"id": "x"},
            "target": {},
            "waves": {"kind": "sideways"},
        }
    )
    await db["firmware"].delete_many({})
    async with (
        online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig,
        executor(db, broker, s3) as ex,
    ):
        await ex.tick()
        await ex.tick()
        rejected = ex.metrics.rejected.labels("rollout")._value.get()
        await rig.commands.flush()
        assert rig.commands.total() == 0  # the devices were sent nothing
    bad = await db["rollout_progress"].find_one({"_id": f"bad-{unique}"})
    assert bad["status"] == "aborted"
    assert "invalid rollout definition" in bad["progress"]["reason"]
    assert await status_of(db, job) == "aborted"
    assert "not found" in (await progress_of(db, job))["reason"]
    assert rejected == 2
    assert await sent_in_db(db, job) == 0


async def test_a_device_in_another_active_rollout_is_not_targeted(
    db, broker, mongo, s3, unique, prefix
):
    first = await setup(db, s3, unique, waves={"kind": "fixed", "size": 2})
    fw = await db["firmware"].find_one({})
    second = f"second-{unique}"
    await db["rollouts"].insert_one(rollout_doc(second, fw))
    async with (
        silent_fleet(db, broker, mongo, s3, unique, prefix, 4) as rig,
        executor(db, broker, s3) as ex,
    ):
        await tick_until(ex, lambda: received(rig, 4))
        await ex.tick()
        await rig.commands.flush()
        commands = rig.commands.commands
    by_job: dict[str, set[str]] = {}
    for e in await db["job_executions"].find({}).to_list(None):
        by_job.setdefault(e["job_id"], set()).add(e["device_id"])
    assert by_job[first] | by_job[second] == set(rig.ids)
    assert not by_job[first] & by_job[second]
    assert {d: len(commands[d]) for d in rig.ids} == dict.fromkeys(rig.ids, 1)
