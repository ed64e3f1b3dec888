"""Indexes the api's queries rely on (created at start; idempotent)."""

from __future__ import annotations

from api.store.base import Db
from schemas.documents import (
    API_TOKENS,
    AUDIT_LOG,
    CLAIM_SLOTS,
    CLAIMS,
    COMMANDS,
    DEVICE_CONFIGS,
    DEVICES,
    FIRMWARE,
    GROUPS,
    SERIAL_BINDINGS,
)


async def ensure_indexes(db: Db) -> None:
    await db[API_TOKENS].create_index([("tenant_id", 1), ("token_id", 1)], unique=True)
    await db[DEVICES].create_index([("tenant_id", 1), ("group", 1)])
    await db[DEVICE_CONFIGS].create_index([("device_id", 1), ("version", 1)])
    await db[FIRMWARE].create_index([("tenant_id", 1), ("version", 1)])
    await db[GROUPS].create_index([("tenant_id", 1)])
    await db[AUDIT_LOG].create_index([("tenant_id", 1), ("_id", -1)])
    await db[CLAIMS].create_index([("tenant_id", 1)])
    await db[CLAIM_SLOTS].create_index([("claim_id", 1)])
    await db[SERIAL_BINDINGS].create_index([("tenant_id", 1), ("device_id", 1)])
    await db[SERIAL_BINDINGS].create_index([("claim_id", 1)])
    await db[COMMANDS].create_index([("tenant_id", 1), ("device_id", 1), ("_id", -1)])
    await db[COMMANDS].create_index([("bulk_id", 1)])
