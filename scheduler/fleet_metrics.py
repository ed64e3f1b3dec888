"""Fleet gauges from the database, at a bounded cost: one computing instance per interval.

Every ``fleet_seconds`` each scheduler instance tries to claim the firing
(``fleet_metrics@<slot>``, a unique-key insert, :meth:`Claims.claim_firing`). The one that
wins reads each source collection once (registry, reported presence, reported state, the
latest broker epoch, rollouts and their progress, execution counts grouped in the
database, rollout leases), computes every gauge in code (:func:`compute`, pure) and
inserts the result as one ``fleet_metrics`` document
(:class:`schemas.documents.FleetMetricsDoc`). Every
instance then exports the latest document, so Prometheus sees the same figures from each
scheduler (rules and dashboards take ``max without (instance)``), and a dead computing
instance is replaced at the next interval. So the database answers eight reads per
interval however many schedulers run, and a scrape never touches it.

Gauges (``tenant`` is the device's or rollout's tenant):

- ``outpost_fleet_devices{tenant,presence}``: registered devices by presence (``online``,
  ``offline``, ``unknown`` when stored before the last broker restart, ``never``);
- ``outpost_fleet_configs_out_of_sync{tenant}`` and
  ``outpost_fleet_configs_out_of_sync_oldest_seconds{tenant}`` (age of the oldest desired
  config a device has not applied);
- ``outpost_fleet_rollouts{tenant,status}``; ``outpost_fleet_executions{status}``;
- ``outpost_fleet_rollout_lease_overdue_seconds{rollout}``: for each running rollout,
  how long ago its newest lease expired without a renewal or takeover (0 while held);
- ``outpost_fleet_computed_timestamp_seconds``, ``outpost_fleet_compute_seconds``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from outpost.store import Document, Store
from scheduler.errors import StoreError
from schemas.documents import (
    BROKER_EPOCHS,
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    FLEET_METRICS,
    JOB_EXECUTIONS,
    ROLLOUT_PROGRESS,
    ROLLOUTS,
    SCHEDULER_CLAIMS,
    DevicePresenceDoc,
    FleetMetricsDoc,
    FleetSample,
    RolloutDoc,
    presence_status,
)
from schemas.rollouts import RolloutStatus, rollout_status

__all__ = [
    "GAUGES",
    "FleetGauges",
    "FleetSources",
    "compute",
    "compute_and_store",
    "latest",
    "read_sources",
]

GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "outpost_fleet_devices": ("Registered devices by presence", ("tenant", "presence")),
    "outpost_fleet_configs_out_of_sync": (
        "Devices that have not applied their desired config",
        ("tenant",),
    ),
    "outpost_fleet_configs_out_of_sync_oldest_seconds": (
        "Age of the oldest desired config not applied yet",
        ("tenant",),
    ),
    "outpost_fleet_rollouts": ("Rollouts by status", ("tenant", "status")),
    "outpost_fleet_executions": ("Job executions by status", ("status",)),
    "outpost_fleet_rollout_lease_overdue_seconds": (
        "Running rollout whose newest lease expired this long ago (0: held)",
        ("rollout",),
    ),
    "outpost_fleet_computed_timestamp_seconds": ("When the fleet gauges were computed", ()),
    "outpost_fleet_compute_seconds": ("How long computing the fleet gauges took", ()),
}
KEEP = 20  # fleet_metrics documents kept (older ones are deleted by the computing one)


@dataclass(frozen=True)
class FleetSources:
    """What one computation reads: one query per collection."""

    devices: list[Document]
    statuses: list[Document]  # device_status: the reported config (state.config)
    presences: list[Document]  # device_presence: the presence (presence)
    epoch: datetime | None
    rollouts: list[Document]
    progress: list[Document]
    executions: Mapping[str, int]
    leases: list[Document]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def compute(src: FleetSources, now: datetime) -> list[FleetSample]:
    """Every gauge sample from the sources (pure)."""
    return [
        *_devices(src, now),
        *_rollouts(src, now),
        *(
            FleetSample(metric="outpost_fleet_executions", labels={"status": s}, value=n)
            for s, n in sorted(src.executions.items())
        ),
    ]


def _devices(src: FleetSources, now: datetime) -> Iterable[FleetSample]:
    statuses = {d["_id"]: d for d in src.statuses}
    presences = {d["_id"]: d for d in src.presences}
    presence: Counter[tuple[str, str]] = Counter()
    behind: Counter[str] = Counter()
    oldest: dict[str, float] = {}
    for device in src.devices:
        tenant = str(device.get("tenant_id") or "")
        status = statuses.get(device["_id"]) or {}
        presence[(tenant, _presence(presences.get(device["_id"]) or {}, src.epoch))] += 1
        desired = device.get("desired_config") or {}
        if "version" not in desired:
            continue
        applied = (status.get("state") or {}).get("config") or {}
        if applied.get("version") == desired["version"] and applied.get("status") == "applied":
            continue
        behind[tenant] += 1
        age = (now - _aware(desired["updated_at"])).total_seconds()
        oldest[tenant] = max(oldest.get(tenant, 0.0), age)
    tenants = sorted({t for t, _ in presence})
    for tenant in tenants:
        for kind in ("online", "offline", "unknown", "never"):
            yield FleetSample(
                metric="outpost_fleet_devices",
                labels={"tenant": tenant, "presence": kind},
                value=presence[(tenant, kind)],
            )
        yield FleetSample(
            metric="outpost_fleet_configs_out_of_sync",
            labels={"tenant": tenant},
            value=behind[tenant],
        )
        yield FleetSample(
            metric="outpost_fleet_configs_out_of_sync_oldest_seconds",
            labels={"tenant": tenant},
            value=round(oldest.get(tenant, 0.0), 1),
        )


def _presence(stored: Document, epoch: datetime | None) -> str:
    """online, offline, unknown (stored before the last broker epoch) or never."""
    if not stored.get("presence"):
        return "never"
    try:
        doc = DevicePresenceDoc.model_validate(stored)
    except ValidationError:
        return "unknown"
    return presence_status(doc, epoch) or "never"


def _rollouts(src: FleetSources, now: datetime) -> Iterable[FleetSample]:
    progress = {p["_id"]: p for p in src.progress}
    newest: dict[str, Document] = {}
    for lease in src.leases:
        name = str(lease.get("lease", ""))
        if name not in newest or lease["token"] > newest[name]["token"]:
            newest[name] = lease
    counts: Counter[tuple[str, str]] = Counter()
    for raw in src.rollouts:
        try:
            rollout = RolloutDoc.model_validate(raw)
        except ValidationError:  # the executor rejects (and counts) it; nothing to show
            continue
        p = progress.get(rollout.id)
        status = rollout_status(
            rollout.spec,
            rollout.control,
            RolloutStatus(p["status"]) if p else None,
            p.get("control_rev") if p else None,
            now,
        )
        counts[(rollout.tenant_id, status.value)] += 1
        if status is RolloutStatus.RUNNING:
            yield _overdue(rollout, newest.get(f"rollout:{rollout.id}"), now)
    for tenant in sorted({t for t, _ in counts}):  # zeros too: an alert compares values
        for name in RolloutStatus:
            yield FleetSample(
                metric="outpost_fleet_rollouts",
                labels={"tenant": tenant, "status": name.value},
                value=counts[(tenant, name.value)],
            )


def _overdue(rollout: RolloutDoc, lease: Document | None, now: datetime) -> FleetSample:
    """Seconds since the newest lease expired (a never-leased rollout counts from its
    creation: the first tick of any instance should lease it)."""
    since = _aware(lease["expires_at"]) if lease else _aware(rollout.created_at)
    return FleetSample(
        metric="outpost_fleet_rollout_lease_overdue_seconds",
        labels={"rollout": rollout.id},
        value=max(0.0, round((now - since).total_seconds(), 1)),
    )


async def read_sources(db: Store) -> FleetSources:
    """One read per collection (projections keep them small)."""
    devices = (
        await db[DEVICES]
        .find({"decommissioned_at": None}, {"tenant_id": 1, "desired_config": 1})
        .to_list()
    )
    statuses = await db[DEVICE_STATUS].find({}, {"state.config": 1}).to_list()
    presences = await db[DEVICE_PRESENCE].find({}, {"presence": 1}).to_list()
    epoch = await db[BROKER_EPOCHS].find_one({}, {"started_at": 1}, sort=[("_id", -1)])
    rollouts = await db[ROLLOUTS].find({}).to_list()
    progress = await db[ROLLOUT_PROGRESS].find({}, {"status": 1, "control_rev": 1}).to_list()
    grouped = await (
        await db[JOB_EXECUTIONS].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
    ).to_list()
    leases = (
        await db[SCHEDULER_CLAIMS]
        .find({"lease": {"$exists": True}}, {"lease": 1, "token": 1, "expires_at": 1})
        .to_list()
    )
    return FleetSources(
        devices,
        statuses,
        presences,
        epoch["started_at"] if epoch else None,
        rollouts,
        progress,
        {str(g["_id"]): int(g["n"]) for g in grouped},
        leases,
    )


class FleetGauges:
    """The gauges in a service's registry, set from a :class:`FleetMetricsDoc`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._gauges = {
            name: Gauge(name, doc, list(labels), registry=registry)
            for name, (doc, labels) in GAUGES.items()
        }

    def export(self, doc: FleetMetricsDoc) -> None:
        for gauge in self._gauges.values():
            gauge.clear()  # label sets that are gone (a finished rollout) disappear
        for sample in doc.samples:
            gauge = self._gauges[sample.metric]
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)
        self._gauges["outpost_fleet_computed_timestamp_seconds"].set(doc.at.timestamp())
        self._gauges["outpost_fleet_compute_seconds"].set(doc.seconds)


async def compute_and_store(db: Store, slot: datetime, instance: str) -> FleetMetricsDoc:
    """The winner of a firing: compute, insert, drop documents older than ``KEEP``."""
    began = time.monotonic()
    try:
        sources = await read_sources(db)
        now = datetime.now(UTC)
        doc = FleetMetricsDoc(
            id=slot.isoformat(timespec="seconds"),
            at=now,
            computed_by=instance,
            seconds=round(time.monotonic() - began, 3),
            samples=compute(sources, now),
        )
        await db[FLEET_METRICS].insert_one(doc.to_mongo())
        old = await db[FLEET_METRICS].find({}, {"_id": 1}).sort("_id", -1).skip(KEEP).to_list()
        if old:
            await db[FLEET_METRICS].delete_many({"_id": {"$in": [o["_id"] for o in old]}})
    except PyMongoError as exc:
        raise StoreError(f"fleet metrics: {exc}") from exc
    return doc


async def latest(db: Store) -> FleetMetricsDoc | None:
    try:
        raw = await db[FLEET_METRICS].find_one({}, sort=[("_id", -1)])
    except PyMongoError as exc:
        raise StoreError(f"fleet metrics: {exc}") from exc
    return FleetMetricsDoc.model_validate(raw) if raw else None
