"""Rollouts against the real broker, bridge, database and S3, with simulated devices.

Every device is registered through the api, downloads its image from S3, reports over
MQTT, reboots and comes back; the bridge records it all; the executor reads only that.
Failures are the devices' own (``device.behaviour.Fault``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import pytest

from device.behaviour import Fault
from scheduler.executor import ExecutorConfig
from schemas.protocol import FirmwareRef, JobCommand, encode
from tests.integration.scheduler.conftest import (
    executor,
    progress_of,
    quiet_mqtt_logger,
    rollout_doc,
    seed_firmware,
    status_of,
    tick_until,
)
from tests.integration.scheduler.devices import online_fleet, until

pytestmark = pytest.mark.integration


async def test_rollout_over_100_devices_in_waves_completes_exactly_once(
    db, broker, mongo, s3, unique, prefix
):
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw, waves={"kind": "fixed", "size": 25}))
    async with (
        online_fleet(db, broker, mongo, s3, unique, 100, prefix=prefix) as rig,
        executor(db, broker, s3) as ex,
    ):
        ticks = await tick_until(ex, lambda: _final(db, job), limit_s=180)
        assert await rig.recorded(rig.ids, online=True, firmware="2.0")  # by the bridge
        stats = rig.fleet.stats
        commands = rig.commands.commands
    assert await status_of(db, job) == "completed"
    assert {d: len(commands[d]) for d in rig.ids} == dict.fromkeys(rig.ids, 1)
    assert all(commands[d][0].execution == 1 for d in rig.ids)
    assert (stats.jobs_succeeded, stats.jobs_failed) == (100, 0)  # each checked its sha256
    expiries = [commands[d][0].expiry for d in rig.ids]
    assert all(e is not None and 0 < e <= 120 for e in expiries)
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert Counter(e["status"] for e in execs) == {"succeeded": 100}
    assert Counter(e["wave"] for e in execs) == {1: 25, 2: 25, 3: 25, 4: 25}
    assert all("url" not in e for e in execs)  # URLs are never stored
    assert ticks > 4  # one wave at a time


async def test_url_is_refused_after_its_expiry(db, broker, mongo, s3, unique, prefix):
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw))
    config = ExecutorConfig(presign_seconds=2, min_url_seconds=1)
    faults = {d: Fault.SILENT for d in (f"{prefix}-000000", f"{prefix}-000001")}
    async with (
        online_fleet(db, broker, mongo, s3, unique, 2, prefix=prefix, faults=faults) as rig,
        executor(db, broker, s3, config=config) as ex,
    ):
        await tick_until(ex, lambda: _received(rig, rig.ids), limit_s=30)
        got = rig.commands.commands[rig.ids[0]][0]
    # The URL says it lives 2 s (a GET right now could already be late on a loaded
    # machine: its validity is shown by the rollout test, whose devices download).
    assert parse_qs(urlsplit(got.url).query)["X-Amz-Expires"] == ["2"]
    assert got.expiry is not None
    assert 0 < got.expiry <= 2
    deadline = time.monotonic() + 30
    while (answer := await asyncio.to_thread(http_answer, got.url))[0] == 200:
        assert time.monotonic() < deadline, "URL still served long after its expiry"
        await asyncio.sleep(0.5)  # polling the expiry (a clock), not a delivery
    status, body = answer
    assert status == 403
    assert "expired" in body.lower()  # refused for its age, not for a bad signature


async def test_thirty_percent_failing_aborts_at_threshold_and_sends_no_more(
    db, broker, mongo, s3, unique, prefix
):
    fw = await seed_firmware(db, s3, unique)
    ids = [f"{prefix}-{i:06d}" for i in range(100)]
    failing = {d: Fault.FAIL_DOWNLOAD for i, d in enumerate(ids) if i % 10 in (1, 4, 7)}  # 30%
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
    async with (
        online_fleet(db, broker, mongo, s3, unique, 100, prefix=prefix, faults=failing) as rig,
        executor(db, broker, s3) as ex,
    ):
        await tick_until(ex, lambda: _final(db, job), limit_s=90)
        sent_at_abort = rig.commands.total()
        # The abort may come while the last reports of the wave are still on their way
        # (10 finished executions are enough to decide): the stopped rollout is followed
        # until every execution it sent is final, and sends nothing more meanwhile.
        await tick_until(ex, lambda: _settled(db, job), limit_s=90)
        for _ in range(3):  # more ticks after that change nothing
            await ex.tick()
        sent_at_end = rig.commands.total()
    assert await status_of(db, job) == "aborted"
    assert "failed" in (await progress_of(db, job))["reason"]
    assert sent_at_abort == 20  # the first wave only: its 6 failures (30%) passed 20%
    assert sent_at_end == sent_at_abort
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert Counter(e["status"] for e in execs) == {"failed": 6, "succeeded": 14}
    assert {e["device_id"] for e in execs if e["status"] == "failed"} == set(failing) & {
        e["device_id"] for e in execs
    }


async def test_retry_gets_a_new_attempt_and_a_fresh_url(db, broker, mongo, s3, unique, prefix):
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
    bad = f"{prefix}-000000"
    config = ExecutorConfig(presign_seconds=120, min_url_seconds=5)
    async with (
        online_fleet(
            db, broker, mongo, s3, unique, 3, prefix=prefix, faults={bad: Fault.FAIL_DOWNLOAD}
        ) as rig,
        executor(db, broker, s3, config=config) as ex,
    ):
        # the retry waits its backoff (5 s) before it is due again
        await tick_until(ex, lambda: _final(db, job), limit_s=90)
        commands = rig.commands.commands
    got = commands[bad]
    assert [r.execution for r in got] == [1, 2]
    assert got[0].url != got[1].url
    execs = {
        e["device_id"]: e for e in await db["job_executions"].find({"job_id": job}).to_list(None)
    }
    assert execs[bad]["status"] == "failed"
    assert execs[bad]["attempt"] == 2
    assert {d: execs[d]["status"] for d in rig.ids[1:]} == dict.fromkeys(rig.ids[1:], "succeeded")
    assert [len(commands[d]) for d in rig.ids[1:]] == [1, 1]


def http_answer(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


async def _final(db, job: str) -> bool:
    return await status_of(db, job) in ("completed", "aborted", "canceled", "paused")


async def _settled(db, job: str) -> bool:
    return (await progress_of(db, job)).get("open_executions") == 0 and await db[
        "job_executions"
    ].count_documents({"job_id": job, "status": {"$in": ["queued", "in_progress"]}}) == 0


async def _received(rig, ids: list[str]) -> bool:
    return all(rig.commands.commands[d] for d in ids)


async def test_takeover_resends_only_unconfirmed_commands_the_device_did_not_answer(
    db, broker, mongo, s3, unique, prefix
):
    """A holder claimed and marked two sends, published one of them, and died."""
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    t0 = datetime.now(UTC) - timedelta(seconds=60)
    await db["rollouts"].insert_one(rollout_doc(job, fw))
    # What the dead holder (a scheduler) had written: progress, its lease, two executions
    # marked sent and two send claims it never confirmed.
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
    # A slow link (4 KiB at 50 bytes/s): the answered device is still downloading when
    # the new holder looks, so its report is progress, not a result.
    async with online_fleet(
        db, broker, mongo, s3, unique, 2, prefix=prefix, download_rate=50
    ) as rig:
        answered, silent = rig.ids
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
        # The one command the dead holder got out: the device answers, the bridge records.
        await publish_command(broker, s3, fw, job, answered)
        await until(
            lambda: _reported(db, job, answered), 30, "the bridge recording the device's answer"
        )
        async with executor(db, broker, s3) as ex:
            await ex.tick()
            await tick_until(ex, lambda: _received(rig, [silent]), limit_s=20)
            for _ in range(3):
                await ex.tick()
            assert ex.metrics.republished._value.get() == 1
        commands = rig.commands.commands
    assert [r.execution for r in commands[answered]] == [1]  # the dead holder's only
    assert [r.execution for r in commands[silent]] == [1]  # re-sent once by the new holder
    sends = {s["_id"]: s for s in await db["scheduler_sends"].find({"job_id": job}).to_list(None)}
    assert sends[f"{job}:{answered}#1"]["how"] == "device reported"
    report = await db["job_reports"].find_one({"_id": f"{job}:{answered}"})
    assert report["status"] == "downloading"  # what it had answered, recorded by the bridge
    assert sends[f"{job}:{silent}#1"]["published_at"] is not None
    assert f"{job}:{silent}#1#r2" in sends  # re-sent under the new token 2


async def publish_command(broker, s3, fw, job: str, device: str) -> None:
    """Publish an upgrade command as a scheduler does (backend account, QoS 1)."""
    url = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": s3.bucket, "Key": fw["s3_key"]}, ExpiresIn=600
    )
    now = datetime.now(UTC)
    command = JobCommand(
        job_id=job,
        execution=1,
        firmware=FirmwareRef(
            version=fw["version"],
            size=fw["size"],
            sha256=fw["sha256"],
            url=url,
            url_expires_at=now + timedelta(seconds=600),
        ),
        issued_at=now,
    )
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=broker.backend_username,
        password=broker.backend_password,
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=quiet_mqtt_logger(),
    ) as client:
        await client.publish(f"devices/{device}/jobs/{job}", encode(command), qos=1)


async def _reported(db, job: str, device: str) -> bool:
    return await db["job_reports"].count_documents({"_id": f"{job}:{device}"}) == 1
