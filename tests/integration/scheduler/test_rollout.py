"""Rollouts against the real broker, database and S3, with a fake fleet (see fleet.py)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.executor import ExecutorConfig
from tests.integration.scheduler.conftest import (
    device_ids,
    executor,
    progress_of,
    rollout_doc,
    seed_devices,
    seed_firmware,
    status_of,
    tick_until,
)
from tests.integration.scheduler.fleet import FAIL, FakeFleet, running

pytestmark = pytest.mark.integration


async def test_rollout_over_200_devices_in_waves_completes_exactly_once(
    db, broker, s3, unique, prefix
):
    ids = device_ids(prefix, 200)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw))
    fleet = FakeFleet(db, prefix)
    async with running(fleet, broker), executor(db, broker, s3) as ex:
        started = time.monotonic()
        ticks = await tick_until(ex, lambda: _final(db, job), limit_s=120)
        elapsed = time.monotonic() - started
    assert await status_of(db, job) == "completed"
    assert {d: len(fleet.commands[d]) for d in ids} == dict.fromkeys(ids, 1)
    assert all(fleet.commands[d][0].execution == 1 for d in ids)
    assert fleet.download_errors == []
    assert fleet.downloads_ok == 200
    expiries = [fleet.commands[d][0].expiry for d in ids]
    assert all(e is not None and 0 < e <= 120 for e in expiries)
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert Counter(e["status"] for e in execs) == {"succeeded": 200}
    assert Counter(e["wave"] for e in execs) == {1: 50, 2: 50, 3: 50, 4: 50}
    assert all("url" not in e for e in execs)  # URLs are never stored
    assert ticks > 4  # one wave at a time
    assert elapsed < 120


async def test_url_is_refused_after_its_expiry(db, broker, s3, unique, prefix):
    ids = device_ids(prefix, 2)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw))
    fleet = FakeFleet(db, prefix, download=False, behaviour=dict.fromkeys(ids, "silent"))
    config = ExecutorConfig(presign_seconds=2, min_url_seconds=1)
    async with running(fleet, broker), executor(db, broker, s3, config=config) as ex:
        await tick_until(ex, lambda: _received(fleet, ids), limit_s=30)
    url = fleet.commands[ids[0]][0].url
    assert await asyncio.to_thread(http_status, url) == 200  # still valid right now
    deadline = time.monotonic() + 15
    while (status := await asyncio.to_thread(http_status, url)) == 200:
        assert time.monotonic() < deadline, "URL still served long after its expiry"
        await asyncio.sleep(0.5)  # polling the expiry (a clock), not a delivery
    assert status == 403


async def test_thirty_percent_failing_aborts_at_threshold_and_sends_no_more(
    db, broker, s3, unique, prefix
):
    ids = device_ids(prefix, 100)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    failing = {d: FAIL for i, d in enumerate(ids) if i % 10 in (1, 4, 7)}  # 30%
    job = f"job-{unique}"
    await db["rollouts"].insert_one(
        rollout_doc(
            job,
            fw,
            waves={"kind": "fixed", "size": 20},
            success={"min_success_percent": 50},
            abort=[{"failure_type": "failed", "threshold_percent": 20, "min_finished": 10}],
        )
    )
    fleet = FakeFleet(db, prefix, behaviour=failing, download=False)
    async with running(fleet, broker), executor(db, broker, s3) as ex:
        await tick_until(ex, lambda: _final(db, job), limit_s=60)
        sent_at_abort = sum(len(v) for v in fleet.commands.values())
        # The abort may come while the last reports of the wave are still on their way
        # (10 finished executions are enough to decide): the stopped rollout is followed
        # until every execution it sent is final, and sends nothing more meanwhile.
        await tick_until(ex, lambda: _settled(db, job), limit_s=60)
        for _ in range(3):  # more ticks after that change nothing
            await ex.tick()
    assert await status_of(db, job) == "aborted"
    assert "failed" in (await progress_of(db, job))["reason"]
    assert sent_at_abort == 20  # the first wave only: its 6 failures (30%) passed 20%
    assert sum(len(v) for v in fleet.commands.values()) == sent_at_abort
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert Counter(e["status"] for e in execs) == {"failed": 6, "succeeded": 14}


async def test_retry_gets_a_new_attempt_and_a_fresh_url(db, broker, s3, unique, prefix):
    ids = device_ids(prefix, 3)
    await seed_devices(db, ids)
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(
        rollout_doc(
            job,
            fw,
            retries=[{"failure_type": "failed", "max_retries": 1}],
            success={"min_success_percent": 0},
        )
    )
    fleet = FakeFleet(db, prefix, behaviour={ids[0]: FAIL}, download=False)
    config = ExecutorConfig(presign_seconds=120, min_url_seconds=5)
    async with running(fleet, broker), executor(db, broker, s3, config=config) as ex:
        # the retry waits its backoff (5 s) before it is due again
        await tick_until(ex, lambda: _final(db, job), limit_s=60)
    got = fleet.commands[ids[0]]
    assert [r.execution for r in got] == [1, 2]
    assert got[0].url != got[1].url
    execs = {
        e["device_id"]: e for e in await db["job_executions"].find({"job_id": job}).to_list(None)
    }
    assert execs[ids[0]]["status"] == "failed"
    assert execs[ids[0]]["attempt"] == 2
    assert [len(fleet.commands[d]) for d in ids[1:]] == [1, 1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def _final(db, job: str) -> bool:
    return await status_of(db, job) in ("completed", "aborted", "canceled", "paused")


async def _settled(db, job: str) -> bool:
    return (await progress_of(db, job)).get("open_executions") == 0 and await db[
        "job_executions"
    ].count_documents({"job_id": job, "status": {"$in": ["queued", "in_progress"]}}) == 0


async def _received(fleet: FakeFleet, ids: list[str]) -> bool:
    return all(fleet.commands[d] for d in ids)


async def test_takeover_resends_only_unconfirmed_commands_the_device_did_not_answer(
    db, broker, s3, unique, prefix
):
    """A holder died after claiming and marking two sends, before confirming them."""
    answered, silent = device_ids(prefix, 2)
    await seed_devices(db, [answered, silent])
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    t0 = datetime.now(UTC) - timedelta(seconds=60)
    await db["rollouts"].insert_one(rollout_doc(job, fw))
    await db["rollout_progress"].insert_one(
        {
            "_id": job,
            "tenant_id": "t1",
            "status": "running",
            "progress": {"wave": 1, "wave_started_at": t0, "fence": 1},
            "control_rev": "r0",
            "updated_at": t0,
        }
    )
    await db["scheduler_claims"].insert_one(
        {
            "_id": f"lease:rollout:{job}:000000000001",
            "lease": f"rollout:{job}",
            "token": 1,
            "holder": "dead",
            "expires_at": t0 + timedelta(seconds=30),
        }
    )
    for device in (answered, silent):
        eid = f"{job}:{device}"
        await db["job_executions"].insert_one(
            {
                "_id": eid,
                "tenant_id": "t1",
                "rollout_id": job,
                "job_id": job,
                "device_id": device,
                "wave": 1,
                "attempt": 1,
                "status": "queued",
                "created_at": t0,
                "sent_at": t0,
                "next_try_at": t0,
                "tries": 0,
                "fence": 1,
            }
        )
        await db["scheduler_sends"].insert_one(
            {
                "_id": f"{eid}#1",
                "job_id": job,
                "execution_id": eid,
                "device_id": device,
                "attempt": 1,
                "token": 1,
                "holder": "dead",
                "stamp": "dead:1:x",
                "intent_at": t0,
                "published_at": None,
            }
        )
    await db["job_reports"].insert_one(  # the bridge recorded the device's answer
        {
            "_id": f"{job}:{answered}",
            "job_id": job,
            "device_id": answered,
            "status": "downloading",
            "k": "1",
            "updated_at": t0,
        }
    )
    fleet = FakeFleet(db, prefix, download=False, behaviour={answered: "silent", silent: "silent"})
    async with running(fleet, broker), executor(db, broker, s3) as ex:
        await ex.tick()
        await tick_until(ex, lambda: _received(fleet, [silent]), limit_s=20)
        for _ in range(3):
            await ex.tick()
        assert ex.metrics.republished._value.get() == 1
    assert fleet.commands[answered] == []
    assert [r.execution for r in fleet.commands[silent]] == [1]
    sends = {s["_id"]: s for s in await db["scheduler_sends"].find({"job_id": job}).to_list(None)}
    assert sends[f"{job}:{answered}#1"]["how"] == "device reported"
    assert sends[f"{job}:{silent}#1"]["published_at"] is not None
    assert f"{job}:{silent}#1#r2" in sends  # re-sent once, under the new token 2
