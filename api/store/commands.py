"""commands and command_bulks (the api's), read with the bridge's results and the
scheduler's sends (joined here, in code)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.errors import Unavailable
from api.pagination import Sort
from api.store.base import Db, page
from outpost.store import Insert
from schemas.documents import (
    AUDIT_LOG,
    COMMAND_BULKS,
    COMMAND_RESULTS,
    COMMAND_SENDS,
    COMMANDS,
    CommandBulkDoc,
    CommandDoc,
    CommandResultDoc,
)

MAX_BULK = 100_000


async def insert(db: Db, doc: CommandDoc) -> None:
    await db[COMMANDS].insert_one(doc.to_mongo())


async def mark(db: Db, command_id: str, fields: dict[str, Any]) -> None:
    """Record the api's own publish (or its failure) on the api's own document."""
    await db[COMMANDS].update_one({"_id": command_id}, {"$set": fields})


async def get(db: Db, tenant_id: str, device_id: str, command_id: str) -> CommandDoc | None:
    raw = await db[COMMANDS].find_one(
        {"_id": command_id, "tenant_id": tenant_id, "device_id": device_id}
    )
    return CommandDoc.model_validate(raw) if raw else None


async def of_device(
    db: Db, tenant_id: str, device_id: str, limit: int, cursor: str | None
) -> tuple[list[CommandDoc], str | None]:
    query = {"tenant_id": tenant_id, "device_id": device_id}
    found = await page(db[COMMANDS], query, Sort("_id", descending=True), limit, cursor)
    return [CommandDoc.model_validate(d) for d in found.items], found.next_cursor


async def results(db: Db, ids: Sequence[str]) -> dict[str, CommandResultDoc]:
    found = await db.find_ids(COMMAND_RESULTS, list(ids))
    return {str(d["_id"]): CommandResultDoc.model_validate(d) for d in found}


async def sent(db: Db, ids: Sequence[str]) -> set[str]:
    """Which group commands the scheduler published (a confirmed send claim)."""
    found = await db.find_ids(COMMAND_SENDS, list(ids), {"published_at": 1})
    return {str(d["_id"]) for d in found if d.get("published_at") is not None}


async def insert_bulk(
    db: Db, bulk: CommandBulkDoc, docs: Sequence[CommandDoc], audit: Sequence[dict[str, Any]]
) -> None:
    """The bulk, then its commands (the scheduler sends only commands of a bulk it sees,
    so a bulk whose commands are still being written is sent in part, then in full)."""
    await db[COMMAND_BULKS].insert_one(bulk.to_mongo())
    for collection, inserts in ((COMMANDS, [d.to_mongo() for d in docs]), (AUDIT_LOG, audit)):
        applied = await db.apply(collection, [Insert(d) for d in inserts])
        if applied.errors or applied.duplicates:
            raise Unavailable(f"database refused {len(applied.errors)} {collection} inserts")


async def get_bulk(db: Db, tenant_id: str, bulk_id: str) -> CommandBulkDoc | None:
    raw = await db[COMMAND_BULKS].find_one({"_id": bulk_id, "tenant_id": tenant_id})
    return CommandBulkDoc.model_validate(raw) if raw else None


async def of_bulk(db: Db, bulk_id: str) -> list[CommandDoc]:
    found = db[COMMANDS].find({"bulk_id": bulk_id}).sort("_id", 1)
    return [CommandDoc.model_validate(d) for d in await found.to_list(MAX_BULK)]
