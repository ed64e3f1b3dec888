"""Fleet gauges: one instance computes per interval (unique-key claim), all export it,
from what real devices reported through the bridge.

The states that take a broker restart or an hour to arise (presence "unknown", a config
an hour behind, an overdue lease) are covered where they are computed, by
tests/unit/scheduler/test_fleet_compute.py; the broker restart itself by
tests/integration/api/test_presence_after_broker_kill.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from outpost.store import Store
from scheduler.claims import Claims
from scheduler.fleet_metrics import FleetGauges, compute_and_store, latest
from schemas.documents import BROKER_EPOCHS, FLEET_METRICS
from tests.integration.scheduler.conftest import LOG
from tests.integration.scheduler.devices import online_fleet

pytestmark = pytest.mark.integration


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name.startswith("outpost_fleet_")
    }


async def test_one_instance_computes_the_fleet_gauges_the_others_export_them(
    db, broker, mongo, s3, unique, prefix
):
    async with online_fleet(db, broker, mongo, s3, unique, 5, prefix=prefix) as rig:
        gone = rig.ids[:2]
        await rig.go_offline(gone)  # graceful: their goodbye reaches the bridge
        boxed = f"{prefix}-boxed"  # registered, given a config, never connected
        await rig.registry.register([boxed])
        async with rig.registry.api.client(rig.registry.token) as http:
            set_config = await http.put(
                f"/devices/{boxed}/config/overrides",
                headers={"If-Match": '"0"'},
                json={"overrides": {"country": "DE", "radios": {"2.4GHz": {}}}},
            )
            assert set_config.status_code == 200, set_config.text

        store = Store(db)
        now = datetime.now(UTC)
        slot = datetime(2030, 1, 1, tzinfo=UTC)
        a, b = Claims(store, "a", lambda: now, LOG), Claims(store, "b", lambda: now, LOG)
        assert await a.claim_firing("fleet_metrics", slot)
        assert not await b.claim_firing("fleet_metrics", slot)  # b only exports
        computed = await compute_and_store(store, slot, "a")
        assert await db[FLEET_METRICS].count_documents({}) == 1
        assert await db[BROKER_EPOCHS].count_documents({}) <= 1

        registry = CollectorRegistry()
        FleetGauges(registry).export(await latest(store))  # what instance b exports
        got = _samples(registry)
        presence = {
            dict(k[1])["presence"]: v for k, v in got.items() if k[0] == "outpost_fleet_devices"
        }
        assert presence == {"online": 3, "offline": 2, "unknown": 0, "never": 1}
        assert got[("outpost_fleet_configs_out_of_sync", (("tenant", "t1"),))] == 1
        assert computed.computed_by == "a"
        assert b"outpost_fleet_computed_timestamp_seconds" in generate_latest(registry)
