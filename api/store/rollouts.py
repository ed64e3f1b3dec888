"""rollouts (definition and admin control; api), joined with the scheduler's
rollout_progress and job_executions (read only here)."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from api.pagination import Sort
from api.store.base import Db, new_id, page
from api.store.revisions import Revision, revise
from outpost.store import Delete, Insert
from schemas.documents import (
    DEVICES,
    JOB_EXECUTIONS,
    ROLLOUT_DEVICES,
    ROLLOUT_PROGRESS,
    ROLLOUTS,
    RolloutDeviceDoc,
    RolloutDoc,
    RolloutProgressDoc,
    target_filter,
)
from schemas.rollouts import RolloutControl, RolloutSpec, RolloutStatus, Target, rollout_status

FINAL = [s.value for s in RolloutStatus if s.final]
MAX_TARGET = 100_000
# A claim naming a rollout that does not exist is one being created right now, unless it
# is older than this (its creator died between the claim and the rollout's insert).
CLAIM_STALE = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class RolloutView:
    rollout: RolloutDoc
    progress: RolloutProgressDoc | None

    def status(self, now: datetime) -> RolloutStatus:
        p = self.progress
        return rollout_status(
            self.rollout.spec,
            self.rollout.control,
            p.status if p else None,
            p.control_rev if p else None,
            now,
        )


async def target_ids(db: Db, tenant_id: str, target: Target) -> list[str]:
    found = db[DEVICES].find(target_filter(tenant_id, target), {"_id": 1}).sort("_id", 1)
    return [d["_id"] for d in await found.to_list(MAX_TARGET)]


async def progress_of(db: Db, ids: Sequence[str]) -> dict[str, RolloutProgressDoc]:
    found = await db.find_ids(ROLLOUT_PROGRESS, ids)
    return {d["_id"]: RolloutProgressDoc.model_validate(d) for d in found}


async def views(db: Db, docs: Sequence[RolloutDoc]) -> list[RolloutView]:
    progress = await progress_of(db, [d.id for d in docs])
    return [RolloutView(d, progress.get(d.id)) for d in docs]


async def active(db: Db, tenant_id: str) -> list[RolloutView]:
    """The tenant's rollouts the scheduler has not finished."""
    final = (
        await db[ROLLOUT_PROGRESS]
        .find({"tenant_id": tenant_id, "status": {"$in": FINAL}}, {"_id": 1})
        .to_list()
    )
    query = {"tenant_id": tenant_id, "_id": {"$nin": [d["_id"] for d in final]}}
    docs = [RolloutDoc.model_validate(d) for d in await db[ROLLOUTS].find(query).to_list()]
    now = datetime.now(UTC)
    return [v for v in await views(db, docs) if v.status(now).active]


@dataclass(frozen=True, slots=True)
class Held:
    """Devices another active rollout holds."""

    rollout_id: str
    device_ids: list[str]


def _claim(device_id: str, tenant_id: str, rollout_id: str, at: datetime) -> dict[str, Any]:
    doc = RolloutDeviceDoc(id=device_id, tenant_id=tenant_id, rollout_id=rollout_id, at=at)
    return doc.to_mongo()


async def _insert_claims(db: Db, tenant_id: str, rollout_id: str, ids: Sequence[str]) -> list[str]:
    """Insert one claim per device; returns the ids whose claim exists already."""
    now = datetime.now(UTC)
    claims = [Insert(_claim(d, tenant_id, rollout_id, now)) for d in ids]
    taken = await db.apply(ROLLOUT_DEVICES, claims)
    return [ids[i] for i in sorted({*taken.duplicates, *taken.errors})]


async def _holders(db: Db, ids: Sequence[str]) -> dict[str, list[RolloutDeviceDoc]]:
    claims = [RolloutDeviceDoc.model_validate(d) for d in await db.find_ids(ROLLOUT_DEVICES, ids)]
    by_rollout: dict[str, list[RolloutDeviceDoc]] = {}
    for claim in claims:
        by_rollout.setdefault(claim.rollout_id, []).append(claim)
    return by_rollout


async def _still_holds(db: Db, claim: RolloutDeviceDoc, now: datetime) -> bool:
    view = await get(db, claim.tenant_id, claim.rollout_id)
    if view is None:
        return now - claim.at < CLAIM_STALE
    return view.status(now).active


async def claim_devices(db: Db, tenant_id: str, rollout_id: str, ids: Sequence[str]) -> Held | None:
    """Make ``rollout_id`` the one active rollout of each device in ``ids``.

    Each device's claim is an insert of its unique ``_id`` in ``rollout_devices``: of two
    rollouts created at once for one device, exactly one inserts it. A claim left by a
    rollout that is final (or never got created) is released and taken. Returns None when
    every device is claimed; else the holder of some (and nothing stays claimed).
    """
    busy = await _insert_claims(db, tenant_id, rollout_id, ids)
    now = datetime.now(UTC)
    for holder, claims in (await _holders(db, busy)).items():
        if await _still_holds(db, claims[0], now):
            await release_devices(db, rollout_id, ids)
            return Held(holder, sorted(c.id for c in claims))
        stale = [Delete({"_id": c.id, "rollout_id": holder}) for c in claims]
        await db.apply(ROLLOUT_DEVICES, stale)
    if busy and (lost := await _insert_claims(db, tenant_id, rollout_id, busy)):
        # another request took a released claim first
        await release_devices(db, rollout_id, ids)
        holders = await _holders(db, lost)
        holder = next(iter(holders), "another rollout")
        return Held(holder, sorted(lost))
    return None


async def release_devices(db: Db, rollout_id: str, ids: Sequence[str]) -> None:
    """Free this rollout's claims on ``ids`` (a rollout that was not created)."""
    await db.apply(ROLLOUT_DEVICES, [Delete({"_id": d, "rollout_id": rollout_id}) for d in ids])


async def create(
    db: Db, tenant_id: str, spec: RolloutSpec, actor: str, rollout_id: str | None = None
) -> RolloutDoc:
    now = datetime.now(UTC)
    doc = RolloutDoc(
        id=rollout_id or new_id(),
        tenant_id=tenant_id,
        spec=spec,
        created_at=now,
        created_by=actor,
        control=RolloutControl(status="running", rev=secrets.token_hex(6), at=now),
    )
    await db[ROLLOUTS].insert_one(doc.to_mongo())
    return doc


async def get(db: Db, tenant_id: str, rollout_id: str) -> RolloutView | None:
    raw = await db[ROLLOUTS].find_one({"_id": rollout_id, "tenant_id": tenant_id})
    if raw is None:
        return None
    return (await views(db, [RolloutDoc.model_validate(raw)]))[0]


async def set_control(db: Db, doc: RolloutDoc, status: str) -> bool:
    """Record an admin request (pause, resume, cancel) as the next revision."""
    control = RolloutControl.model_validate(
        {"status": status, "rev": secrets.token_hex(6), "at": datetime.now(UTC)}
    )
    update = {"$set": {"control": control.model_dump()}}
    return doc.id in await revise(db, ROLLOUTS, [Revision(doc.id, doc.rev, update)])


async def find(
    db: Db, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[RolloutView], str | None]:
    found = await page(
        db[ROLLOUTS], {"tenant_id": tenant_id}, Sort("_id", descending=True), limit, cursor
    )
    docs = [RolloutDoc.model_validate(d) for d in found.items]
    return await views(db, docs), found.next_cursor


async def execution_counts(db: Db, tenant_id: str, rollout_id: str) -> dict[str, Counter[str]]:
    """{"all": Counter, "wave:<n>": Counter} of execution statuses."""
    query = {"tenant_id": tenant_id, "rollout_id": rollout_id}
    counts: dict[str, Counter[str]] = {"all": Counter()}
    async for doc in db[JOB_EXECUTIONS].find(query, {"status": 1, "wave": 1}):
        status = str(doc.get("status"))
        counts["all"][status] += 1
        counts.setdefault(f"wave:{doc.get('wave')}", Counter())[status] += 1
    return counts
