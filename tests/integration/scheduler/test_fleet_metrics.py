"""Fleet gauges: one instance computes per interval (unique-key claim), all export it.

Unlike the rollout tests (real devices through the bridge, tests/integration/scheduler/
devices.py), this one checks an aggregate read over stored documents, including states
only a broker restart or an hour of waiting would produce; so it stores those documents
itself (:func:`stored_fleet`), the bridge's among them. The states themselves are
produced for real elsewhere: presence by the bridge tests, broker epochs by
tests/integration/api/test_presence_after_broker_kill.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from outpost.store import Insert, Store
from scheduler.claims import Claims
from scheduler.fleet_metrics import FleetGauges, compute_and_store, latest
from schemas.documents import (
    BROKER_EPOCHS,
    DEVICE_STATUS,
    DEVICES,
    FLEET_METRICS,
    JOB_EXECUTIONS,
    ROLLOUTS,
    DeviceDoc,
)
from tests.integration.scheduler.conftest import LOG, device_ids, rollout_doc

pytestmark = pytest.mark.integration


async def stored_fleet(db, ids: list[str], *, online: bool = True) -> None:
    """Registry entries (the api's) and what the devices reported (the bridge's)."""
    store = Store(db)
    now = datetime.now(UTC)
    registry = [
        DeviceDoc(
            id=d, tenant_id="t1", group="g1", tags=["ap"], hardware_model="hw1", created_at=now
        ).to_mongo()
        for d in ids
    ]
    await store.apply(DEVICES, [Insert(d) for d in registry])
    presence = {"status": "online" if online else "offline", "since": now, "k": "0"}
    state = {"firmware": "1.0", "hardware_model": "hw1", "h": "x", "k": "0", "updated_at": now}
    status = [{"_id": d, "tenant_id": "t1", "presence": presence, "state": state} for d in ids]
    await store.apply(DEVICE_STATUS, [Insert(d) for d in status])


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith("outpost_fleet_")
    }


async def test_one_instance_computes_every_gauge_and_the_others_export_it(db, prefix):
    now = datetime.now(UTC)
    online, offline = device_ids(f"{prefix}on", 6), device_ids(f"{prefix}off", 3)
    await stored_fleet(db, online)
    await stored_fleet(db, offline, online=False)
    behind = online[:2]  # desired config v2 for an hour, nothing applied
    await db[DEVICES].update_many(
        {"_id": {"$in": behind}},
        {
            "$set": {
                "desired_config": {
                    "version": 2,
                    "hash": "h",
                    "updated_at": now - timedelta(hours=1),
                }
            }
        },
    )
    # the broker restarted after two of the online devices announced themselves
    await db[DEVICE_STATUS].update_many(
        {"_id": {"$in": online[4:]}},
        {"$set": {"presence.since": now - timedelta(minutes=10)}},
    )
    await db[BROKER_EPOCHS].insert_one(
        {
            "_id": "start:x",
            "started_at": now - timedelta(minutes=5),
            "source": "uptime",
            "seen_by": "0",
            "seen_at": now,
        }
    )
    await db[ROLLOUTS].insert_one(
        rollout_doc(f"r{prefix}", {"_id": "fw", "version": "2.0"})
        | {"created_at": now - timedelta(minutes=3)}
    )
    await db[JOB_EXECUTIONS].insert_many(
        [{"_id": f"e{i}", "status": s} for i, s in enumerate(["queued", "queued", "failed"])]
    )
    store = Store(db)
    slot = datetime(2030, 1, 1, tzinfo=UTC)
    a, b = Claims(store, "a", lambda: now, LOG), Claims(store, "b", lambda: now, LOG)
    assert await a.claim_firing("fleet_metrics", slot)
    assert not await b.claim_firing("fleet_metrics", slot)  # b only exports
    computed = await compute_and_store(store, slot, "a")
    assert await db[FLEET_METRICS].count_documents({}) == 1

    registry = CollectorRegistry()
    FleetGauges(registry).export(await latest(store))  # what instance b exports
    got = _samples(registry)
    presence = {
        dict(k[1])["presence"]: v for k, v in got.items() if k[0] == "outpost_fleet_devices"
    }
    assert presence == {"online": 4, "offline": 3, "unknown": 2, "never": 0}
    assert got[("outpost_fleet_configs_out_of_sync", (("tenant", "t1"),))] == 2
    assert got[("outpost_fleet_configs_out_of_sync_oldest_seconds", (("tenant", "t1"),))] >= 3600
    assert got[("outpost_fleet_rollouts", (("status", "running"), ("tenant", "t1")))] == 1
    overdue = got[("outpost_fleet_rollout_lease_overdue_seconds", (("rollout", f"r{prefix}"),))]
    assert overdue >= 170  # running three minutes, never leased
    assert got[("outpost_fleet_executions", (("status", "queued"),))] == 2
    assert got[("outpost_fleet_executions", (("status", "failed"),))] == 1
    assert computed.computed_by == "a"
    assert b"outpost_fleet_computed_timestamp_seconds" in generate_latest(registry)


async def test_the_scheduler_counts_online_only_what_a_live_broker_vouches_for(db, prefix):
    from scheduler.store import RolloutStore

    now = datetime.now(UTC)
    before, after = f"{prefix}-before", f"{prefix}-after"
    await stored_fleet(db, [before, after])
    await db[DEVICE_STATUS].update_one(
        {"_id": before}, {"$set": {"presence.since": now - timedelta(minutes=10)}}
    )
    views = await RolloutStore(Store(db)).device_views([before, after])
    assert (views[before].online, views[after].online) == (True, True)
    await db[BROKER_EPOCHS].insert_one(
        {
            "_id": "start:x",
            "started_at": now - timedelta(minutes=5),
            "source": "session_lost",
            "seen_by": "0",
            "seen_at": now,
        }
    )
    views = await RolloutStore(Store(db)).device_views([before, after])
    assert (views[before].online, views[after].online) == (False, True)
