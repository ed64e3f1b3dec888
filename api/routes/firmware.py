"""Firmware images: create the record, stream the image to S3, list, get, delete."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status

from api.deps import DEFAULT, Cursor, Db, Limit, Operator, State, Viewer
from api.errors import Conflict, NotFound, Unavailable
from api.models import PLAIN, FirmwareCreate, FirmwarePublic, PageOf
from api.store import audit
from api.store import firmware as store
from schemas.documents import FirmwareDoc
from schemas.firmware import FirmwareManifest

router = APIRouter(tags=["firmware"])
FirmwareId = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$")]


def public(doc: FirmwareDoc) -> FirmwarePublic:
    return FirmwarePublic.model_validate(doc.model_dump(exclude={"tenant_id", "s3_key"}))


@router.post("/firmware", status_code=status.HTTP_201_CREATED)
async def create_firmware(body: FirmwareCreate, db: Db, who: Operator) -> FirmwarePublic:
    """Step 1: the metadata. Step 2: PUT the bytes to /firmware/{id}/image."""
    models = sorted(set(body.hardware_models))
    if await store.duplicate_of(db, who.tenant_id, body.version, models):
        raise Conflict(f"version {body.version} already exists for one of {models}")
    doc = await store.create(db, who.tenant_id, body.version, models, body.release_notes)
    await audit.record(
        db,
        who,
        "firmware.create",
        f"firmware:{doc.id}",
        after={"version": body.version, "hardware_models": models},
    )
    return public(doc)


@router.put(
    "/firmware/{firmware_id}/image",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_image(
    firmware_id: FirmwareId, request: Request, state: State, who: Operator
) -> FirmwarePublic:
    """Stream the image (application/octet-stream) to S3; size and sha256 on the way.

    One upload per image: a concurrent second upload is a 409 (it never reaches S3), a
    failed one frees the slot for a retry. An empty body is a 422."""
    doc = await store.get(state.db, who.tenant_id, firmware_id)
    if doc is None:
        raise NotFound(f"no firmware {firmware_id!r}")
    if doc.status != "pending":
        raise Conflict("the image was already uploaded; create a new firmware version")
    signer = state.settings.signer()
    if signer is None:
        raise Unavailable(
            "no firmware signing key is configured (OUTPOST_API_FIRMWARE_SIGNING_KEY): "
            "devices install only signed images"
        )
    if not await store.claim_upload(state.db, firmware_id):
        raise Conflict("another upload of this image is in progress")
    try:
        stored = await state.firmware.upload(doc.s3_key, request.stream())
        signature = signer.sign(
            FirmwareManifest(
                version=doc.version,
                size=stored.size,
                sha256=stored.sha256,
                hardware_models=tuple(doc.hardware_models),
            )
        )
        updated = await store.mark_uploaded(
            state.db, firmware_id, stored.size, stored.sha256, signature
        )
    except BaseException:
        await asyncio.shield(store.release_upload(state.db, firmware_id))
        raise
    if updated is None:  # deleted meanwhile
        raise NotFound(f"no firmware {firmware_id!r}")
    await audit.record(
        state.db,
        who,
        "firmware.upload",
        f"firmware:{firmware_id}",
        after={"size": stored.size, "sha256": stored.sha256},
    )
    return public(updated)


@router.get("/firmware")
async def list_firmware(
    db: Db,
    who: Viewer,
    limit: Limit = DEFAULT,
    cursor: Cursor = None,
    hardware_model: Annotated[str | None, Query(max_length=64, pattern=PLAIN)] = None,
) -> PageOf[FirmwarePublic]:
    items, next_cursor = await store.find(db, who.tenant_id, limit, cursor, hardware_model)
    return PageOf[FirmwarePublic](items=[public(d) for d in items], next_cursor=next_cursor)


@router.get("/firmware/{firmware_id}")
async def get_firmware(firmware_id: FirmwareId, db: Db, who: Viewer) -> FirmwarePublic:
    doc = await store.get(db, who.tenant_id, firmware_id)
    if doc is None:
        raise NotFound(f"no firmware {firmware_id!r}")
    return public(doc)


@router.delete("/firmware/{firmware_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_firmware(firmware_id: FirmwareId, state: State, who: Operator) -> None:
    doc = await store.get(state.db, who.tenant_id, firmware_id)
    if doc is None:
        raise NotFound(f"no firmware {firmware_id!r}")
    if await store.in_use(state.db, who.tenant_id, firmware_id):
        raise Conflict("an active rollout uses this firmware")
    await state.firmware.delete(doc.s3_key)
    await store.delete(state.db, who.tenant_id, firmware_id)
    await audit.record(
        state.db,
        who,
        "firmware.delete",
        f"firmware:{firmware_id}",
        before={"version": doc.version},
    )
