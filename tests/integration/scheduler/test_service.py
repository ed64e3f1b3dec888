"""``outpost scheduler`` as real processes: SIGKILL takeover, $SYS gauges, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploy.local import free_port
from tests.integration.scheduler.conftest import (
    rollout_doc,
    seed_firmware,
    status_of,
)
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration


class Instance:
    def __init__(self, name: str, env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log = folder / f"scheduler-{name}.log"
        full = {
            **os.environ,
            **env,
            "OUTPOST_HTTP_PORT": str(self.port),
            "OUTPOST_SCHEDULER_INSTANCE": name,
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "scheduler"],
                env=full,
                cwd=folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}{path}", timeout=2
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def service_env(db, broker, mongo, s3, **extra: str) -> dict[str, str]:
    return {
        "OUTPOST_MQTT_URL": broker.url,
        "OUTPOST_MQTT_USERNAME": broker.account("scheduler")[0],
        "OUTPOST_MQTT_PASSWORD": broker.account("scheduler")[1],
        "OUTPOST_MONGO_URL": mongo.url,
        "OUTPOST_MONGO_DATABASE": db.name,
        "OUTPOST_S3_ENDPOINT_URL": s3.url,
        "OUTPOST_S3_BUCKET": s3.bucket,
        "OUTPOST_S3_ACCESS_KEY_ID": s3.access_key,
        "OUTPOST_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OUTPOST_S3_PRESIGN_SECONDS": "600",
        "OUTPOST_SCHEDULER_TICK_SECONDS": "0.3",
        "OUTPOST_SCHEDULER_LEASE_SECONDS": "3",
        "OUTPOST_SCHEDULER_LEASE_MARGIN_SECONDS": "1",
        "OUTPOST_SCHEDULER_SETTLE_SECONDS": "2",
        "OUTPOST_SCHEDULER_BATCH": "8",
        **extra,
    }


async def until(condition, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def ready(instance: Instance) -> bool:
    return (await asyncio.to_thread(instance.get, "/readyz"))[0] == 200


async def test_sigkill_of_the_lease_holder_mid_rollout_no_duplicate_no_missing(
    db, broker, mongo, s3, unique, prefix, tmp_path
):
    tmp_path.chmod(0o755)
    n = 100
    fw = await seed_firmware(db, s3, unique)
    job = f"job-{unique}"
    await db["rollouts"].insert_one(rollout_doc(job, fw, waves={"kind": "fixed", "size": 20}))
    env = service_env(db, broker, mongo, s3)
    instances = {}
    async with online_fleet(db, broker, mongo, s3, unique, n, prefix=prefix) as rig:
        try:
            for name in ("a", "b"):
                instances[name] = Instance(name, env, tmp_path)
            for inst in instances.values():
                await until(lambda inst=inst: ready(inst), 30, f"{inst.name} ready")

            async def some_sent() -> bool:
                return rig.commands.reached(rig.ids) >= 30

            await until(some_sent, 90, "first waves")
            lease = await db["scheduler_claims"].find_one(
                {"lease": f"rollout:{job}"}, sort=[("token", -1)]
            )
            victim = instances[lease["holder"]]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            # Where the kill landed, from what the victim left in the database: it had
            # sent part of the rollout, and some of its send claims may be unconfirmed.
            sent_at_kill = await db["job_executions"].count_documents(
                {"job_id": job, "sent_at": {"$ne": None}}
            )
            unconfirmed = {
                s["device_id"]
                for s in await db["scheduler_sends"]
                .find({"job_id": job, "published_at": None})
                .to_list(None)
            }

            async def finished() -> bool:
                return await status_of(db, job) == "completed"

            await until(finished, 180, "rollout completed")
            survivor = next(i for i in instances.values() if i is not victim)
            status, metrics = await asyncio.to_thread(survivor.get, "/metrics")
            assert status == 200
            assert "outpost_scheduler_commands_published_total" in metrics
            survivor.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(survivor.proc.wait, 20) == 0
            await rig.commands.flush()
            assert await rig.recorded(rig.ids, online=True, firmware="2.0")
        finally:
            for inst in instances.values():
                inst.stop()
        commands = rig.commands.commands
    assert 30 <= sent_at_kill < n, "the kill did not land mid-rollout"
    assert len(unconfirmed) <= 8  # at most one batch (OUTPOST_SCHEDULER_BATCH) in flight
    missing = [d for d in rig.ids if not commands[d]]
    assert missing == []
    # One execution per device; a command is sent twice only if the victim died between
    # publishing it and confirming it and the device had not answered by the takeover.
    executions = {d: sorted({r.execution for r in commands[d]}) for d in rig.ids}
    assert executions == {d: [1] for d in rig.ids}
    duplicated = {d for d in rig.ids if len(commands[d]) > 1}
    assert duplicated <= unconfirmed
    execs = await db["job_executions"].find({"job_id": job}).to_list(None)
    assert len(execs) == n
    assert {e["status"] for e in execs} == {"succeeded"}
    claims = await db["scheduler_claims"].find({"lease": f"rollout:{job}"}).to_list(None)
    assert max(c["token"] for c in claims) >= 2  # the lease was taken over
    assert {c["holder"] for c in claims if c["token"] > lease["token"]} == {survivor.name}


async def test_sys_metrics_become_gauges_and_sigterm_stops_cleanly(db, broker, mongo, s3, tmp_path):
    tmp_path.chmod(0o755)
    env = service_env(db, broker, mongo, s3, OUTPOST_SCHEDULER_SNAPSHOT_SECONDS="1")
    inst = Instance("solo", env, tmp_path)
    try:
        await until(lambda: ready(inst), 30, "ready")
        assert (await asyncio.to_thread(inst.get, "/healthz"))[0] == 200

        async def gauges() -> bool:
            _, body = await asyncio.to_thread(inst.get, "/metrics")
            return (
                "\noutpost_broker_clients_connected " in body
                and "\noutpost_broker_retained_messages " in body
            )

        await until(gauges, 30, "$SYS gauges")  # Mosquitto publishes $SYS every 10 s

        # The first snapshot may hold the retained $SYS value Mosquitto published before
        # this scheduler connected (0 clients between two tests); the broker republishes
        # every 10 s, and then the scheduler itself is counted.
        async def snapshot() -> bool:
            return (
                await db["broker_metrics"].count_documents(
                    {"values.clients/connected": {"$gte": 1}}
                )
                > 0
            )

        await until(snapshot, 30, "a broker snapshot counting this scheduler")
        inst.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(inst.proc.wait, 20) == 0
    finally:
        inst.stop()
