"""firmware: image metadata; the bytes live in S3 under ``firmware/{tenant}/{id}``."""

from __future__ import annotations

from datetime import UTC, datetime

from api.pagination import Sort
from api.store.base import Db, Doc, Page, new_id, page
from schemas.documents import FIRMWARE, ROLLOUTS
from schemas.rollouts import RolloutStatus

ACTIVE = [s.value for s in RolloutStatus if s.active]


async def duplicate_of(db: Db, tenant_id: str, version: str, models: list[str]) -> Doc | None:
    return await db[FIRMWARE].find_one(
        {"tenant_id": tenant_id, "version": version, "hardware_models": {"$in": models}}
    )


async def create(db: Db, tenant_id: str, version: str, models: list[str], notes: str) -> Doc:
    fw_id = new_id()
    doc = {
        "_id": fw_id,
        "tenant_id": tenant_id,
        "version": version,
        "hardware_models": models,
        "release_notes": notes,
        "status": "pending",
        "s3_key": f"firmware/{tenant_id}/{fw_id}",
        "size": None,
        "sha256": None,
        "created_at": datetime.now(UTC),
        "uploaded_at": None,
    }
    await db[FIRMWARE].insert_one(doc)
    return doc


async def get(db: Db, tenant_id: str, fw_id: str) -> Doc | None:
    return await db[FIRMWARE].find_one({"_id": fw_id, "tenant_id": tenant_id})


async def mark_uploaded(db: Db, fw_id: str, size: int, sha256: str) -> Doc | None:
    return await db[FIRMWARE].find_one_and_update(
        {"_id": fw_id},
        {
            "$set": {
                "status": "ready",
                "size": size,
                "sha256": sha256,
                "uploaded_at": datetime.now(UTC),
            }
        },
        return_document=True,
    )


async def in_use(db: Db, tenant_id: str, fw_id: str) -> bool:
    query = {"tenant_id": tenant_id, "firmware.id": fw_id, "status": {"$in": ACTIVE}}
    return await db[ROLLOUTS].find_one(query, {"_id": 1}) is not None


async def delete(db: Db, tenant_id: str, fw_id: str) -> None:
    await db[FIRMWARE].delete_one({"_id": fw_id, "tenant_id": tenant_id})


async def find(
    db: Db, tenant_id: str, limit: int, cursor: str | None, hardware_model: str | None = None
) -> Page:
    query: Doc = {"tenant_id": tenant_id}
    if hardware_model:
        query["hardware_models"] = hardware_model
    return await page(db[FIRMWARE], query, Sort("_id", descending=True), limit, cursor)
