"""Nothing is sent outside the maintenance window (injected clock, across a DST change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from scheduler.executor import ExecutorConfig
from tests.integration.scheduler.conftest import (
    device_ids,
    executor,
    rollout_doc,
    seed_devices,
    seed_firmware,
    tick_until,
)
from tests.integration.scheduler.fleet import FakeFleet, running

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_outside_the_window_on_the_dst_night_nothing_is_sent(db, broker, s3, unique, prefix):
    ids = device_ids(prefix, 5)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    # 02:00-04:00 Berlin. On 2026-03-29 02:00 does not exist (clocks jump 02:00 -> 03:00
    # at 01:00 UTC): the window opens at 03:00 CEST = 01:00 UTC and closes 02:00 UTC.
    window = {"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}
    await db["rollouts"].insert_one(rollout_doc(job, fw, schedule={"windows": [window]}))
    clock = FakeClock(datetime(2026, 3, 29, 0, 0, tzinfo=UTC))  # 01:00 CET
    fleet = FakeFleet(db, prefix, download=False)
    config = ExecutorConfig(presign_seconds=7200, min_url_seconds=5)
    async with running(fleet, broker), executor(db, broker, s3, clock=clock, config=config) as ex:
        for minutes in (0, 30, 59):  # 01:00, 01:30, 01:59 CET: before the window
            clock.now = datetime(2026, 3, 29, 0, minutes, tzinfo=UTC)
            await ex.tick()
        assert await db["job_executions"].count_documents({"job_id": job}) == 0
        clock.now = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST: inside
        await tick_until(ex, lambda: _all_received(fleet, ids), limit_s=30)
        clock.now = datetime(2026, 3, 29, 2, 0, tzinfo=UTC)  # 04:00 CEST: closed again
        await seed_devices(db, [f"{prefix}-late"])
        for _ in range(3):
            await ex.tick()
    assert f"{prefix}-late" not in fleet.commands
    assert await db["job_executions"].count_documents({"device_id": f"{prefix}-late"}) == 0
    for d in ids:
        (got,) = fleet.commands[d]
        assert got.expiry is not None
        assert 0 < got.expiry <= 1800  # URL lifetime capped by the window's end
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert {e["url_expires_at"] for e in execs} == {datetime(2026, 3, 29, 2, 0, tzinfo=UTC)}


async def test_window_end_closer_than_the_minimum_url_lifetime_sends_nothing(
    db, broker, s3, unique, prefix
):
    ids = device_ids(prefix, 2)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    end = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    await db["rollouts"].insert_one(rollout_doc(job, fw, schedule={"end_at": end}))
    clock = FakeClock(end - timedelta(seconds=3))  # min_url_seconds is 5 in these tests
    fleet = FakeFleet(db, prefix, download=False)
    async with running(fleet, broker), executor(db, broker, s3, clock=clock) as ex:
        await ex.tick()
    sent = {"job_id": job, "sent_at": {"$ne": None}}
    assert await db["job_executions"].count_documents(sent) == 0


async def _all_received(fleet: FakeFleet, ids: list[str]) -> bool:
    return all(fleet.commands[d] for d in ids)
