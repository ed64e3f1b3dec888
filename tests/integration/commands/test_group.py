"""A command to a group of 500 simulated devices, sent by the scheduler's sender at the
bulk's per-minute cap, each over its device's own session."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest

from deploy.local import Mosquitto, free_port
from outpost.store import Store
from scheduler.claims import Claims
from scheduler.commands import CommandConfig, CommandSender
from scheduler.errors import PublishError
from scheduler.metrics import SchedulerMetrics
from scheduler.publisher import CommandSink, MqttSink, Outgoing, Presigner
from schemas.documents import COMMAND_RESULTS, COMMAND_SENDS
from tests.integration.commands.conftest import LOG, until
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration

# 500 by default (the size); registering that many broker accounts is most of the
# test's time (Mosquitto rewrites its dynamic-security file at every change), so
# OUTPOST_TEST_GROUP_DEVICES=100 shrinks it while you iterate
DEVICES = int(os.environ.get("OUTPOST_TEST_GROUP_DEVICES", "500"))
CAP = 3000  # per minute: one send every 20 ms, the 500 in about ten seconds
SPACING = 60 / CAP
SLACK = 10  # sends one tick (0.1 s) may release at once, plus timing noise


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def own_broker(servers_root: Path, unique: str) -> Iterator[Mosquitto]:
    """A broker of the test's own, stopped with its 500 device accounts. Deleting them one
    by one from the shared broker took as long as creating them (25-40 s: Mosquitto
    rewrites its whole dynamic-security file at every change)."""
    broker = Mosquitto(
        servers_root / f"mosquitto-{unique}", free_port(), backend_password=f"pw{unique}"
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.slow
async def test_group_command_to_a_500_device_group_respects_its_per_minute_cap(
    db, own_broker, mongo, s3, unique, prefix
):
    broker = own_broker
    async with online_fleet(
        db, broker, mongo, s3, unique, DEVICES, prefix=prefix, group="g1", own_broker=True
    ) as rig:
        async with rig.registry.api.client(rig.registry.token) as http:
            made = await http.post(
                "/commands",
                json={
                    "name": "ping",
                    "args": {"target": "192.0.2.1", "count": 1},
                    "target": {"group": "g1"},
                    "max_per_minute": CAP,
                    "expires_in_s": 300,
                },
            )
            assert made.status_code == 202, made.text
            bulk = made.json()
            assert bulk["devices"] == DEVICES
            assert bulk["statuses"] == {"queued": DEVICES}

            quiet = logging.getLogger("test.commands.sender")
            quiet.setLevel(logging.ERROR)
            user, password = broker.account("scheduler")
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username=user,
                password=password,
                identifier=f"sched-{secrets.token_hex(3)}",
                protocol=aiomqtt.ProtocolVersion.V5,
                logger=quiet,
            ) as client:
                store = Store(db)
                sender = CommandSender(
                    store,
                    Claims(store, "s1", now, LOG),
                    MqttSink(client),
                    Presigner(s3.client(), s3.bucket),
                    SchedulerMetrics(),
                    now,
                    LOG,
                    CommandConfig(batch=64),
                )
                await sender.ensure_indexes()
                deadline = time.monotonic() + 60
                while await db[COMMAND_RESULTS].count_documents({}) < DEVICES:
                    assert time.monotonic() < deadline, "not all answered within 60 s"
                    await sender.tick()
                    await asyncio.sleep(0.1)  # the job's period, not a wait for delivery
                await sender.tick()  # everything confirmed: the bulk is marked done
                assert await sender._active(now()) == []

            done = (await http.get(f"/commands/{bulk['id']}")).json()
            assert done["statuses"] == {"succeeded": DEVICES}
        assert await db[COMMAND_SENDS].count_documents({}) == DEVICES  # no re-sends

        ids = [c for d in rig.ids for c in rig.fleet.device(d).commands]
        assert len(ids) == len(set(ids)) == DEVICES  # each device got it once
        arrivals = sorted(rig.fleet.arrivals[c] for c in ids)
        first = arrivals[0]
        for k, at in enumerate(arrivals):
            assert at - first >= (k - SLACK) * SPACING, (k, at - first)
        span = arrivals[-1] - first
        assert span >= (DEVICES - 1 - SLACK) * SPACING
        in_any_second = max(
            sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals
        )
        assert in_any_second <= CAP / 60 + SLACK
        LOG.info("group command", extra={"span_s": round(span, 2), "max_per_s": in_any_second})


class _DiesAfterClaiming(CommandSink):
    """A sender that dies between claim and publish: nothing reaches the broker."""

    async def publish_all(self, messages: Sequence[Outgoing]) -> None:
        raise PublishError("killed before the publish")


async def test_a_claim_its_sender_never_confirmed_is_sent_by_the_next_lease_holder(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 1, prefix=prefix) as rig:
        device = rig.ids[0]
        async with rig.registry.api.client(rig.registry.token) as http:
            made = await http.post(
                "/commands",
                json={
                    "name": "ping",
                    "args": {"target": "192.0.2.1"},
                    "target": {"device_ids": [device]},
                },
            )
            assert made.status_code == 202, made.text
            config = CommandConfig(
                lease_ttl=timedelta(seconds=1),
                lease_margin=timedelta(seconds=0.2),
                settle=timedelta(seconds=0.5),
            )
            store = Store(db)
            dead = CommandSender(
                store,
                Claims(store, "dead", now, LOG),
                _DiesAfterClaiming(),
                Presigner(s3.client(), s3.bucket),
                SchedulerMetrics(),
                now,
                LOG,
                config,
            )
            await dead.tick()  # claimed, never published: its lease runs out
            assert await db[COMMAND_SENDS].count_documents({"published_at": None}) == 1
            user, password = broker.account("scheduler")
            async with aiomqtt.Client(
                "127.0.0.1",
                broker.port,
                username=user,
                password=password,
                identifier=f"sched-{secrets.token_hex(3)}",
                protocol=aiomqtt.ProtocolVersion.V5,
            ) as client:
                live = CommandSender(
                    store,
                    Claims(store, "live", now, LOG),
                    MqttSink(client),
                    Presigner(s3.client(), s3.bucket),
                    SchedulerMetrics(),
                    now,
                    LOG,
                    config,
                )

                async def answered() -> bool:
                    await live.tick()
                    return await db[COMMAND_RESULTS].count_documents({}) == 1

                await until(answered, 20, "the re-send answered", interval=0.2)
        assert len(rig.fleet.device(device).commands) == 1  # sent once, run once
        resend = await db[COMMAND_SENDS].find_one({"_id": {"$regex": "#r"}})
        assert resend is not None
        assert resend["published_at"] is not None
