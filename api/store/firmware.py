"""firmware: image metadata; the bytes live in S3 under ``firmware/{tenant}/{id}``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.pagination import Sort
from api.store import rollouts
from api.store.base import Db, Doc, new_id, page
from outpost.store import Delete, Insert
from schemas.documents import FIRMWARE, REVISIONS, FirmwareDoc

# An upload slot whose holder died (process killed mid-upload) is taken over after this.
UPLOAD_STALE = timedelta(minutes=30)


async def duplicate_of(db: Db, tenant_id: str, version: str, models: list[str]) -> Doc | None:
    return await db[FIRMWARE].find_one(
        {"tenant_id": tenant_id, "version": version, "hardware_models": {"$in": models}}
    )


async def create(
    db: Db, tenant_id: str, version: str, models: list[str], notes: str
) -> FirmwareDoc:
    fw_id = new_id()
    doc = FirmwareDoc(
        id=fw_id,
        tenant_id=tenant_id,
        version=version,
        hardware_models=models,
        release_notes=notes,
        status="pending",
        s3_key=f"firmware/{tenant_id}/{fw_id}",
        created_at=datetime.now(UTC),
    )
    await db[FIRMWARE].insert_one(doc.to_mongo())
    return doc


async def get(db: Db, tenant_id: str, fw_id: str) -> FirmwareDoc | None:
    raw = await db[FIRMWARE].find_one({"_id": fw_id, "tenant_id": tenant_id})
    return FirmwareDoc.model_validate(raw) if raw else None


def upload_slot_id(fw_id: str) -> str:
    return f"{FIRMWARE}:{fw_id}:upload"


async def claim_upload(db: Db, fw_id: str) -> bool:
    """Take the one upload slot of image ``fw_id``: a unique ``_id`` insert in
    ``revisions``, so of two concurrent uploads exactly one streams to S3 (the other is a
    409). A slot older than :data:`UPLOAD_STALE` is taken over."""
    slot = upload_slot_id(fw_id)
    now = datetime.now(UTC)
    for _ in range(2):
        taken = await db.apply(REVISIONS, [Insert({"_id": slot, "at": now})])
        if not taken.duplicates and not taken.errors:
            return True
        stale = {"_id": slot, "at": {"$lt": now - UPLOAD_STALE}}
        if not (await db.apply(REVISIONS, [Delete(stale)])).deleted:
            return False
    return False


async def release_upload(db: Db, fw_id: str) -> None:
    """Free the slot after a failed upload, so the image can be uploaded again."""
    await db.apply(REVISIONS, [Delete({"_id": upload_slot_id(fw_id)})])


async def mark_uploaded(
    db: Db, fw_id: str, size: int, sha256: str, signature: str
) -> FirmwareDoc | None:
    raw = await db[FIRMWARE].find_one_and_update(
        {"_id": fw_id, "status": "pending"},
        {
            "$set": {
                "status": "ready",
                "size": size,
                "sha256": sha256,
                "signature": signature,
                "uploaded_at": datetime.now(UTC),
            }
        },
        return_document=True,
    )
    return FirmwareDoc.model_validate(raw) if raw else None


async def in_use(db: Db, tenant_id: str, fw_id: str) -> bool:
    """Whether a rollout the scheduler has not finished installs this image."""
    return any(v.rollout.spec.firmware.id == fw_id for v in await rollouts.active(db, tenant_id))


async def delete(db: Db, tenant_id: str, fw_id: str) -> None:
    await db[FIRMWARE].delete_one({"_id": fw_id, "tenant_id": tenant_id})


async def find(
    db: Db, tenant_id: str, limit: int, cursor: str | None, hardware_model: str | None = None
) -> tuple[list[FirmwareDoc], str | None]:
    query: Doc = {"tenant_id": tenant_id}
    if hardware_model:
        query["hardware_models"] = hardware_model
    found = await page(db[FIRMWARE], query, Sort("_id", descending=True), limit, cursor)
    return [FirmwareDoc.model_validate(d) for d in found.items], found.next_cursor
