"""rollouts (definition + requested status; the scheduler owns progress) and their
executions (read only here)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from api.pagination import Sort
from api.store.base import Db, Doc, Page, new_id, page
from schemas.documents import DEVICES, JOB_EXECUTIONS, ROLLOUTS, target_filter
from schemas.rollouts import RolloutSpec, RolloutStatus, Target

ACTIVE = [s.value for s in RolloutStatus if s.active]
MAX_TARGET = 100_000


async def target_ids(db: Db, tenant_id: str, target: Target) -> list[str]:
    found = db[DEVICES].find(target_filter(tenant_id, target), {"_id": 1}).sort("_id", 1)
    return [d["_id"] for d in await found.to_list(MAX_TARGET)]


async def active(db: Db, tenant_id: str) -> list[Doc]:
    query = {"tenant_id": tenant_id, "status": {"$in": ACTIVE}}
    return await db[ROLLOUTS].find(query).to_list(1000)


def spec_fields(spec: RolloutSpec) -> Doc:
    """The spec as BSON-friendly fields: sets as sorted lists, durations in seconds,
    local times as ``HH:MM:SS``; datetimes stay dates. ``RolloutSpec.model_validate``
    reads them back (the scheduler does exactly that)."""
    doc = spec.model_dump(mode="python")
    doc["target"]["tags"] = sorted(spec.target.tags)
    doc["target"]["device_ids"] = sorted(spec.target.device_ids)
    doc["schedule"]["windows"] = [_window(w) for w in doc["schedule"]["windows"]]
    for key in ("in_progress_timeout", "grace_period"):
        doc[key] = doc[key].total_seconds()
    doc["success"]["wait"] = doc["success"]["wait"].total_seconds()
    return doc


async def create(db: Db, tenant_id: str, spec: RolloutSpec, actor: str) -> Doc:
    now = datetime.now(UTC)
    scheduled = spec.schedule.start_at is not None and spec.schedule.start_at > now
    doc = {
        "_id": new_id(),
        "tenant_id": tenant_id,
        **spec_fields(spec),
        "status": (RolloutStatus.SCHEDULED if scheduled else RolloutStatus.RUNNING).value,
        "progress": {},
        "created_at": now,
        "created_by": actor,
    }
    await db[ROLLOUTS].insert_one(doc)
    return doc


def _window(window: dict[str, Any]) -> dict[str, Any]:
    return {
        **window,
        "days": sorted(window["days"]),
        "start": window["start"].isoformat(),
        "end": window["end"].isoformat(),
    }


async def get(db: Db, tenant_id: str, rollout_id: str) -> Doc | None:
    return await db[ROLLOUTS].find_one({"_id": rollout_id, "tenant_id": tenant_id})


async def set_status(
    db: Db, tenant_id: str, rollout_id: str, allowed_from: list[str], new: RolloutStatus
) -> Doc | None:
    return await db[ROLLOUTS].find_one_and_update(
        {"_id": rollout_id, "tenant_id": tenant_id, "status": {"$in": allowed_from}},
        {"$set": {"status": new.value, "status_requested_at": datetime.now(UTC)}},
        return_document=True,
    )


async def find(db: Db, tenant_id: str, limit: int, cursor: str | None) -> Page:
    return await page(
        db[ROLLOUTS], {"tenant_id": tenant_id}, Sort("_id", descending=True), limit, cursor
    )


async def execution_counts(db: Db, tenant_id: str, rollout_id: str) -> dict[str, Counter[str]]:
    """{"status": Counter, "wave:<n>": Counter} over the rollout's executions."""
    query = {"tenant_id": tenant_id, "rollout_id": rollout_id}
    counts: dict[str, Counter[str]] = {"all": Counter()}
    async for doc in db[JOB_EXECUTIONS].find(query, {"status": 1, "wave": 1}):
        status = str(doc.get("status"))
        counts["all"][status] += 1
        counts.setdefault(f"wave:{doc.get('wave')}", Counter())[status] += 1
    return counts
