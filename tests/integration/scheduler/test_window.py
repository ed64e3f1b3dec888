"""Nothing is sent outside the maintenance window (injected clock, across a DST change)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from scheduler.executor import ExecutorConfig
from tests.integration.scheduler.conftest import (
    executor,
    rollout_doc,
    seed_firmware,
    tick_until,
)
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def next_spring_forward() -> date:
    """The last Sunday of March of next year: the EU moves its clocks at 01:00 UTC.

    In the future, so that the devices (on the real clock) take the URLs the executor
    (on this clock) says are still valid.
    """
    last = date(datetime.now(UTC).year + 1, 3, 31)
    return last - timedelta(days=(last.weekday() + 1) % 7)


async def test_outside_the_window_on_the_dst_night_nothing_is_sent(
    db, broker, mongo, s3, unique, prefix
):
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    # 02:00-04:00 Berlin. That night 02:00 does not exist (clocks jump 02:00 -> 03:00
    # at 01:00 UTC): the window opens at 03:00 CEST = 01:00 UTC and closes 02:00 UTC.
    window = {"start": "02:00", "end": "04:00", "timezone": "Europe/Berlin"}
    await db["rollouts"].insert_one(rollout_doc(job, fw, schedule={"windows": [window]}))
    night = next_spring_forward()

    def at(hour: int, minute: int) -> datetime:
        return datetime(night.year, night.month, night.day, hour, minute, tzinfo=UTC)

    clock = FakeClock(at(0, 0))  # 01:00 CET
    config = ExecutorConfig(presign_seconds=7200, min_url_seconds=5)
    async with (
        online_fleet(db, broker, mongo, s3, unique, 5, prefix=prefix) as rig,
        executor(db, broker, s3, clock=clock, config=config) as ex,
    ):
        for minutes in (0, 30, 59):  # 01:00, 01:30, 01:59 CET: before the window
            clock.now = at(0, minutes)
            await ex.tick()
        assert await db["job_executions"].count_documents({"job_id": job}) == 0
        await rig.commands.flush()
        assert rig.commands.total() == 0
        clock.now = at(1, 30)  # 03:30 CEST: inside
        await tick_until(ex, lambda: _all_received(rig, rig.ids), limit_s=30)
        clock.now = at(2, 0)  # 04:00 CEST: closed again
        late = f"{prefix}-late"
        await rig.registry.register([late], tags=["ap"])  # a device registered meanwhile
        for _ in range(3):
            await ex.tick()
        await rig.commands.flush()
        commands = rig.commands.commands
    assert late not in commands
    assert await db["job_executions"].count_documents({"device_id": late}) == 0
    for d in rig.ids:
        (got,) = commands[d]
        assert got.expiry is not None
        assert 0 < got.expiry <= 1800  # URL lifetime capped by the window's end
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert {e["url_expires_at"] for e in execs} == {at(2, 0)}


async def test_window_end_closer_than_the_minimum_url_lifetime_sends_nothing(
    db, broker, mongo, s3, unique, prefix
):
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    end = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    await db["rollouts"].insert_one(rollout_doc(job, fw, schedule={"end_at": end}))
    clock = FakeClock(end - timedelta(seconds=3))  # min_url_seconds is 5 in these tests
    async with (
        online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix) as rig,
        executor(db, broker, s3, clock=clock) as ex,
    ):
        await ex.tick()
        await rig.commands.flush()
        assert rig.commands.total() == 0
    sent = {"job_id": job, "sent_at": {"$ne": None}}
    assert await db["job_executions"].count_documents(sent) == 0


async def _all_received(rig, ids: list[str]) -> bool:
    return all(rig.commands.commands[d] for d in ids)
