"""Fleet gauges computed from their sources (pure): every presence kind, configs behind,
rollouts and their leases, executions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from scheduler.fleet_metrics import FleetSources, compute
from schemas.documents import RolloutDoc
from schemas.rollouts import RolloutControl, RolloutSpec

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EPOCH = NOW - timedelta(minutes=5)  # the broker restarted five minutes ago


def present(device: str, presence: str, since: datetime) -> dict:
    """A ``device_presence`` document."""
    stored = {"status": presence, "since": since, "k": "0"}
    return {"_id": device, "tenant_id": "t1", "presence": stored}


def status(device: str, applied: int) -> dict:
    """A ``device_status`` document (the reported config only)."""
    return {"_id": device, "state": {"config": {"version": applied, "status": "applied"}}}


def device(device: str, desired: int | None = None, set_at: datetime = NOW):
    doc: dict = {"_id": device, "tenant_id": "t1"}
    if desired is not None:
        doc["desired_config"] = {"version": desired, "hash": "h", "updated_at": set_at}
    return doc


def rollout(rollout_id: str, created: datetime) -> dict:
    spec = RolloutSpec.model_validate(
        {
            "firmware": {"id": "fw", "version": "2.0.0"},
            "target": {"group": "g1"},
            "waves": {"kind": "fixed", "size": 5},
        }
    )
    return RolloutDoc(
        id=rollout_id,
        tenant_id="t1",
        spec=spec,
        created_at=created,
        control=RolloutControl(status="running", rev="r0"),
    ).to_mongo()


def test_every_gauge_from_its_sources():
    hour_ago = NOW - timedelta(hours=1)
    devices = [device(f"on{i}") for i in range(4)]
    devices += [device("behind", desired=2, set_at=hour_ago), device("synced", desired=3)]
    devices += [device(f"off{i}") for i in range(3)] + [device("stale"), device("new")]
    devices += [device("state-only", desired=3)]
    minute_ago = NOW - timedelta(minutes=1)
    presences = [present(d, "online", minute_ago) for d in ("on0", "on1", "on2", "on3")]
    presences += [
        present("behind", "online", minute_ago),
        present("synced", "online", minute_ago),
        *(present(f"off{i}", "offline", NOW - timedelta(hours=2)) for i in range(3)),
        present("stale", "online", NOW - timedelta(minutes=10)),  # before the restart
    ]
    # the reported config is in the other document; a device may have either alone
    statuses = [status("behind", 1), status("synced", 3), status("state-only", 3)]
    leased = rollout("r-leased", NOW - timedelta(minutes=3))
    orphan = rollout("r-orphan", NOW - timedelta(minutes=3))
    leases = [
        {"lease": "rollout:r-leased", "token": "1", "expires_at": NOW - timedelta(seconds=30)},
        {"lease": "rollout:r-leased", "token": "2", "expires_at": NOW + timedelta(seconds=30)},
    ]
    src = FleetSources(
        devices=devices,
        statuses=statuses,
        presences=presences,
        epoch=EPOCH,
        rollouts=[leased, orphan],
        progress=[],
        executions={"queued": 2, "failed": 1},
        leases=leases,
    )
    got = {(s.metric, tuple(sorted(s.labels.items()))): s.value for s in compute(src, NOW)}
    presence = {
        dict(labels)["presence"]: v
        for (m, labels), v in got.items()
        if m == "outpost_fleet_devices"
    }
    assert presence == {"online": 6, "offline": 3, "unknown": 1, "never": 2}
    tenant = (("tenant", "t1"),)
    assert got[("outpost_fleet_configs_out_of_sync", tenant)] == 1
    assert got[("outpost_fleet_configs_out_of_sync_oldest_seconds", tenant)] == 3600
    assert got[("outpost_fleet_rollouts", (("status", "running"), ("tenant", "t1")))] == 2
    # the newest lease is held (0); the never-leased one counts from its creation
    assert got[("outpost_fleet_rollout_lease_overdue_seconds", (("rollout", "r-leased"),))] == 0
    assert got[("outpost_fleet_rollout_lease_overdue_seconds", (("rollout", "r-orphan"),))] == 180
    assert got[("outpost_fleet_executions", (("status", "queued"),))] == 2
    assert got[("outpost_fleet_executions", (("status", "failed"),))] == 1


def test_a_stored_presence_that_does_not_validate_is_unknown_not_a_crash():
    src = FleetSources(
        devices=[device("odd")],
        statuses=[],
        presences=[{"_id": "odd", "presence": {"status": "sideways"}}],
        epoch=None,
        rollouts=[],
        progress=[],
        executions={},
        leases=[],
    )
    got = {(s.metric, tuple(sorted(s.labels.items()))): s.value for s in compute(src, NOW)}
    assert got[("outpost_fleet_devices", (("presence", "unknown"), ("tenant", "t1")))] == 1
