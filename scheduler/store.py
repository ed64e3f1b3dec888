"""MongoDB storage adapter of the rollout executor (``rollouts``, ``job_executions``,
``devices``, ``firmware``). Every write that changes an execution is conditional on what
the caller read (status, attempt, and the fencing token), so a former lease holder
cannot overwrite a newer one. pymongo errors become :class:`StoreError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, PyMongoError
from pymongo.operations import InsertOne, UpdateOne

from outpost.mongo import Document, bulk_write, chunk_size
from scheduler.errors import StoreError
from schemas.documents import (
    DEVICES,
    FIRMWARE,
    JOB_EXECUTIONS,
    ROLLOUTS,
    SCHEDULER_SENDS,
    target_filter,
)
from schemas.rollouts import ExecutionStatus, RolloutProgress, RolloutStatus, Target

__all__ = ["RolloutStore"]

P = ParamSpec("P")
R = TypeVar("R")
OPEN = [ExecutionStatus.QUEUED.value, ExecutionStatus.IN_PROGRESS.value]
ACTIVE = [s.value for s in RolloutStatus if s.active]
FOLLOWED = [RolloutStatus.ABORTED.value, RolloutStatus.CANCELED.value]


def _mapped(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except PyMongoError as exc:
            raise StoreError(f"{fn.__name__}: {exc}") from exc

    return wrapper


class RolloutStore:
    def __init__(self, db: AsyncDatabase[Document]) -> None:
        self.db = db
        self.rollouts = db[ROLLOUTS]
        self.executions = db[JOB_EXECUTIONS]
        self.devices = db[DEVICES]
        self.sends = db[SCHEDULER_SENDS]
        self._chunk: int | None = None

    async def chunk(self) -> int:
        if self._chunk is None:
            self._chunk = await chunk_size(self.db)
        return self._chunk

    @_mapped
    async def active_rollouts(self) -> list[Document]:
        """Rollouts to move on, and stopped ones whose sent executions are still open."""
        return await self.rollouts.find(
            {
                "$or": [
                    {"status": {"$in": ACTIVE}},
                    {"status": {"$in": FOLLOWED}, "progress.open_executions": {"$gt": 0}},
                ]
            }
        ).to_list(None)

    @_mapped
    async def firmware(self, firmware_id: str) -> Document | None:
        ids: list[Any] = [firmware_id]
        if ObjectId.is_valid(firmware_id):
            ids.append(ObjectId(firmware_id))
        return await self.db[FIRMWARE].find_one({"_id": {"$in": ids}})

    @_mapped
    async def save(
        self,
        rollout_id: str,
        token: int,
        progress: RolloutProgress,
        status: RolloutStatus | None = None,
        expect: str | None = None,
    ) -> bool:
        """Write progress (and status) unless a newer lease holder wrote first, or the
        status changed under us (``expect``: the status we read, e.g. an api pause)."""
        query: Document = {"_id": rollout_id, "progress.fence": {"$not": {"$gt": token}}}
        if expect is not None:
            query["status"] = expect
        update: Document = {
            "progress": progress.model_copy(update={"fence": token}).model_dump(mode="python")
        }
        if status is not None:
            update["status"] = status.value
        result = await self.rollouts.update_one(query, {"$set": update})
        return result.matched_count == 1

    @_mapped
    async def counts(self, job_id: str, wave: int | None = None) -> dict[ExecutionStatus, int]:
        match: Document = {"job_id": job_id}
        if wave is not None:
            match["wave"] = wave
        rows = await self.executions.aggregate(
            [{"$match": match}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        return {ExecutionStatus(r["_id"]): int(r["n"]) async for r in rows}

    @_mapped
    async def sent_count(self, job_id: str) -> int:
        return await self.executions.count_documents({"job_id": job_id, "sent_at": {"$ne": None}})

    @_mapped
    async def tracked(self, job_id: str) -> list[Document]:
        """Open executions that were sent: their status may change."""
        return await self.executions.find(
            {"job_id": job_id, "status": {"$in": OPEN}, "sent_at": {"$ne": None}}
        ).to_list(None)

    @_mapped
    async def device_views(self, ids: Sequence[str]) -> dict[str, Document]:
        cursor = self.devices.find(
            {"_id": {"$in": list(ids)}}, {"presence.status": 1, "state.firmware": 1}
        )
        return {d["_id"]: d async for d in cursor}

    @_mapped
    async def target_count(self, tenant_id: Any, target: Target) -> int:
        return await self.devices.count_documents(target_filter(tenant_id, target))

    @_mapped
    async def eligible(self, job_id: str, tenant_id: Any, target: Target, limit: int) -> list[str]:
        """Target devices without an execution of this job nor an open one of another."""
        if limit <= 0:
            return []
        done = await self.executions.distinct("device_id", {"job_id": job_id})
        query = target_filter(tenant_id, target)
        if done:
            query = {"$and": [query, {"_id": {"$nin": done}}]}
        picked: list[str] = []
        cursor = self.devices.find(query, {"_id": 1}).sort("_id", 1)
        async for batch in _batches(cursor, 500):
            busy = set(
                await self.executions.distinct(
                    "device_id",
                    {
                        "device_id": {"$in": batch},
                        "status": {"$in": OPEN},
                        "job_id": {"$ne": job_id},
                    },
                )
            )
            picked += [d for d in batch if d not in busy][: limit - len(picked)]
            if len(picked) >= limit:
                break
        return picked

    async def create(self, docs: Sequence[Document]) -> int:
        """Insert executions; ones that already exist (same ``_id``) are left alone."""
        try:
            counts = await bulk_write(
                self.executions, [InsertOne(d) for d in docs], chunk=await self.chunk()
            )
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise StoreError(f"create executions: {exc}") from exc
            return int(exc.details.get("nInserted", 0))
        except PyMongoError as exc:
            raise StoreError(f"create executions: {exc}") from exc
        return counts.inserted

    @_mapped
    async def due(self, job_id: str, now: datetime, limit: int) -> list[Document]:
        """Queued executions not marked sent whose next try is due, oldest wave first."""
        query = {
            "job_id": job_id,
            "status": ExecutionStatus.QUEUED.value,
            "sent_at": None,
            "next_try_at": {"$lte": now},
        }
        return await (
            self.executions.find(query).sort([("wave", 1), ("_id", 1)]).limit(limit).to_list(None)
        )

    async def apply(self, ops: Sequence[UpdateOne]) -> int:
        if not ops:
            return 0
        try:
            counts = await bulk_write(self.executions, ops, chunk=await self.chunk())
        except PyMongoError as exc:
            raise StoreError(f"update executions: {exc}") from exc
        return counts.modified

    async def insert_sends(self, docs: Sequence[Document]) -> None:
        """Insert send claims; the ones whose ``_id`` exists already are refused."""
        if not docs:
            return
        try:
            await bulk_write(self.sends, [InsertOne(d) for d in docs], chunk=await self.chunk())
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise StoreError(f"insert sends: {exc}") from exc
        except PyMongoError as exc:
            raise StoreError(f"insert sends: {exc}") from exc

    @_mapped
    async def stamped(self, stamp: str) -> list[Document]:
        return await self.sends.find({"stamp": stamp}).to_list(None)

    @_mapped
    async def send_docs(self, ids: Sequence[str]) -> list[Document]:
        return await self.sends.find({"_id": {"$in": list(ids)}}).to_list(None)

    @_mapped
    async def unpublished(self, job_id: str, before: datetime, limit: int) -> list[Document]:
        query = {"job_id": job_id, "published_at": None, "intent_at": {"$lt": before}}
        return await self.sends.find(query).limit(limit).to_list(None)

    @_mapped
    async def execution_docs(self, ids: Sequence[str]) -> dict[str, Document]:
        cursor = self.executions.find({"_id": {"$in": list(ids)}})
        return {d["_id"]: d async for d in cursor}

    @_mapped
    async def mark_published(
        self, send_ids: Sequence[str], when: datetime, how: str = "puback"
    ) -> None:
        await self.sends.update_many(
            {"_id": {"$in": list(send_ids)}}, {"$set": {"published_at": when, "how": how}}
        )

    @_mapped
    async def mark_sent(
        self, execution_ids: Sequence[str], when: datetime, expires: datetime | None
    ) -> None:
        update: Document = {"sent_at": when}
        if expires is not None:
            update["url_expires_at"] = expires
        await self.executions.update_many({"_id": {"$in": list(execution_ids)}}, {"$set": update})

    @_mapped
    async def cancel_unsent(self, job_id: str, token: int, now: datetime) -> int:
        result = await self.executions.update_many(
            {
                "job_id": job_id,
                "status": ExecutionStatus.QUEUED.value,
                "sent_at": None,
                "fence": {"$not": {"$gt": token}},
            },
            {
                "$set": {
                    "status": ExecutionStatus.CANCELED.value,
                    "finished_at": now,
                    "reason": "rollout stopped",
                    "fence": token,
                }
            },
        )
        return result.modified_count


async def _batches(cursor: Any, size: int) -> Any:
    batch: list[str] = []
    async for doc in cursor:
        batch.append(doc["_id"])
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
