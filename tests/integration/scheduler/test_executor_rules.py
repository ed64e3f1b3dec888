"""Rate limits, exponential rate, offline devices, pause/resume/cancel (injected clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.scheduler.conftest import (
    control,
    device_ids,
    executor,
    progress_of,
    rollout_doc,
    seed_devices,
    seed_firmware,
    set_presence,
    status_of,
    tick_until,
)
from tests.integration.scheduler.fleet import SILENT, FakeFleet, running

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def sent(fleet: FakeFleet) -> int:
    return sum(len(v) for v in fleet.commands.values())


async def sent_in_db(db, job: str) -> int:
    return await db["job_executions"].count_documents({"job_id": job, "sent_at": {"$ne": None}})


async def setup(db, s3, unique, prefix, n, **spec):
    ids = device_ids(prefix, n)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw, **spec))
    return ids, job


async def test_max_per_minute_caps_a_large_wave(db, broker, s3, unique, prefix):
    ids, job = await setup(
        db, s3, unique, prefix, 30, max_per_minute=12, waves={"kind": "fixed", "size": 30}
    )
    clock = FakeClock()
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, SILENT))
    async with running(fleet, broker), executor(db, broker, s3, clock=clock) as ex:
        await ex.tick()
        await ex.tick()
        assert await sent_in_db(db, job) == 12
        clock.now += timedelta(seconds=59)
        await ex.tick()
        assert await sent_in_db(db, job) == 12
        clock.now += timedelta(seconds=1)
        await ex.tick()
        assert await sent_in_db(db, job) == 24
        await tick_until(ex, lambda: _count(fleet, 24))


async def test_exponential_rate_grows_with_notified_devices(db, broker, s3, unique, prefix):
    ids, job = await setup(
        db,
        s3,
        unique,
        prefix,
        40,
        waves={
            "kind": "exponential",
            "base_rate_per_minute": 4,
            "increment_factor": 2,
            "notified_devices": 4,
        },
    )
    clock = FakeClock()
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, SILENT))
    totals = []
    async with running(fleet, broker), executor(db, broker, s3, clock=clock) as ex:
        for _ in range(3):
            await ex.tick()
            await ex.tick()  # a second tick in the same minute adds nothing
            totals.append(await sent_in_db(db, job))
            clock.now += timedelta(minutes=1)
    # minute 1: 4/min; 4 notified -> 8/min; 12 notified -> 4 * 2**3 = 32/min
    assert totals == [4, 12, 40]


async def test_offline_device_waits_and_is_sent_when_back(db, broker, s3, unique, prefix):
    ids, _ = await setup(db, s3, unique, prefix, 3, success={"min_success_percent": 0})
    away = ids[0]
    await set_presence(db, away, "offline")
    clock = FakeClock()
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, SILENT))
    async with running(fleet, broker), executor(db, broker, s3, clock=clock) as ex:
        await ex.tick()
        await tick_until(ex, lambda: _count(fleet, 2))
        clock.now += timedelta(minutes=5)
        await ex.tick()
        assert fleet.commands[away] == []  # still offline: pending, not skipped
        ex_doc = await db["job_executions"].find_one({"device_id": away})
        assert ex_doc["status"] == "queued"
        assert ex_doc["tries"] >= 2
        await set_presence(db, away, "online")
        clock.now += timedelta(minutes=3)  # past the capped backoff
        await tick_until(ex, lambda: _count(fleet, 3))
    assert [r.execution for r in fleet.commands[away]] == [1]


async def test_pause_resume_and_cancel_take_effect_at_the_next_tick(db, broker, s3, unique, prefix):
    ids, job = await setup(
        db, s3, unique, prefix, 20, max_per_minute=5, waves={"kind": "fixed", "size": 20}
    )
    clock = FakeClock()
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, SILENT))
    async with running(fleet, broker), executor(db, broker, s3, clock=clock) as ex:
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
        await tick_until(ex, lambda: _count(fleet, 10))
    counts = {
        s: await db["job_executions"].count_documents({"job_id": job, "status": s})
        for s in ("queued", "canceled")
    }
    assert counts == {"queued": 10, "canceled": 10}  # the 10 sent run to their end


async def _count(fleet: FakeFleet, n: int) -> bool:
    return sent(fleet) >= n


async def test_invalid_rollout_or_missing_firmware_aborts_with_a_reason(
    db, broker, s3, unique, prefix
):
    ids, job = await setup(db, s3, unique, prefix, 2)
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
    async with executor(db, broker, s3) as ex:
        await ex.tick()
        await ex.tick()
        rejected = ex.metrics.rejected.labels("rollout")._value.get()
    bad = await db["rollout_progress"].find_one({"_id": f"bad-{unique}"})
    assert bad["status"] == "aborted"
    assert "invalid rollout definition" in bad["progress"]["reason"]
    assert await status_of(db, job) == "aborted"
    assert "not found" in (await progress_of(db, job))["reason"]
    assert rejected == 2
    assert await sent_in_db(db, job) == 0
    assert len(ids) == 2


async def test_a_device_in_another_active_rollout_is_not_targeted(db, broker, s3, unique, prefix):
    ids, first = await setup(db, s3, unique, prefix, 4, waves={"kind": "fixed", "size": 2})
    fw = await db["firmware"].find_one({})
    second = f"second-{unique}"
    await db["rollouts"].insert_one(rollout_doc(second, fw))
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, SILENT))
    async with running(fleet, broker), executor(db, broker, s3) as ex:
        await tick_until(ex, lambda: _count(fleet, 4))
        await ex.tick()
    by_job = {}
    for e in await db["job_executions"].find({}).to_list(None):
        by_job.setdefault(e["job_id"], set()).add(e["device_id"])
    assert by_job[first] | by_job[second] == set(ids)
    assert not by_job[first] & by_job[second]
    assert all(len(fleet.commands[d]) == 1 for d in ids)
