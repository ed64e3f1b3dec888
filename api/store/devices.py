"""devices (api-owned fields only) and device_configs (bounded history)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ReplaceOne, ReturnDocument, UpdateOne

from api.errors import Unavailable
from api.pagination import Sort, after_filter, encode_cursor, sort_spec
from api.store.base import Db, Doc, Page, from_json_text, page, to_json_text
from outpost.mongo import bulk_write, chunk_size, is_ferretdb, settle_delay
from schemas.documents import DEVICE_CONFIGS, DEVICES

SORTS = {
    "id": "_id",
    "created_at": "created_at",
    "hardware_model": "hardware_model",
    "group": "group",
}
SCAN_MAX = 2000
API_REV = "api_rev"  # changes with every api write of a device (see update_fields)
SETTLE_ROUNDS = 8
JSON = ("overrides",)
CONFIG_JSON = ("config",)


def _load(doc: Doc | None) -> Doc | None:
    return from_json_text(doc, JSON)  # documents one filtered page may examine


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    online: bool | None = None
    group: str | None = None
    tag: str | None = None
    firmware: str | None = None
    hardware_model: str | None = None
    last_seen_before: datetime | None = None
    last_seen_after: datetime | None = None
    include_decommissioned: bool = False

    def query(self, tenant_id: str) -> Doc:
        q: Doc = {"tenant_id": tenant_id}
        if not self.include_decommissioned:
            q["decommissioned_at"] = None
        if self.online is not None:
            q["presence.status"] = "online" if self.online else {"$ne": "online"}
        for field, value in (
            ("group", self.group),
            ("tags", self.tag),
            ("state.firmware", self.firmware),
            ("hardware_model", self.hardware_model),
        ):
            if value is not None:
                q[field] = value
        seen: Doc = {}
        if self.last_seen_before:
            seen["$lt"] = self.last_seen_before
        if self.last_seen_after:
            seen["$gt"] = self.last_seen_after
        if seen:
            q["last_seen"] = seen
        return q


async def insert(db: Db, doc: Doc) -> None:
    await db[DEVICES].insert_one(to_json_text(doc, JSON))


async def delete(db: Db, device_id: str) -> None:
    await db[DEVICES].delete_one({"_id": device_id})


async def get(db: Db, tenant_id: str, device_id: str, *, live_only: bool = True) -> Doc | None:
    q: Doc = {"_id": device_id, "tenant_id": tenant_id}
    if live_only:
        q["decommissioned_at"] = None
    return _load(await db[DEVICES].find_one(q))


async def update_fields(db: Db, tenant_id: str, device_id: str, fields: Doc) -> bool:
    """Set api-owned fields of a live device; False if there is none.

    Every write stamps a fresh ``api_rev``. On FerretDB, where a concurrent bridge
    update of the same document can undo ours (outpost.mongo), the write is read back
    after :func:`settle_delay` and sent again while the stored ``api_rev`` is still the
    one it replaced; a different one means a newer api write, which wins.
    """
    rev = secrets.token_hex(8)
    values = {**to_json_text(fields, JSON), API_REV: rev}
    live = {"_id": device_id, "tenant_id": tenant_id, "decommissioned_at": None}
    started = time.monotonic()
    before = await db[DEVICES].find_one_and_update(
        live, {"$set": values}, return_document=ReturnDocument.BEFORE
    )
    if before is None:
        return False
    if await is_ferretdb(db):
        unchanged = {**live, API_REV: before.get(API_REV)}
        await _settled(db, device_id, unchanged, values, rev, time.monotonic() - started)
    return True


async def _settled(
    db: Db, device_id: str, unchanged: Doc, values: Doc, rev: str, took: float
) -> None:
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(settle_delay(took))
        now = await db[DEVICES].find_one({"_id": device_id}, {API_REV: 1})
        if now is None or now.get(API_REV) != unchanged[API_REV]:
            return  # ours is stored, a newer write replaced it, or the device is gone
        started = time.monotonic()
        await db[DEVICES].update_one(unchanged, {"$set": values})
        took = time.monotonic() - started
    raise Unavailable(
        f"device {device_id!r} is being written too often to store the "
        f"change (FerretDB lost it {SETTLE_ROUNDS} times); retry"
    )


async def find(
    db: Db,
    tenant_id: str,
    flt: DeviceFilter,
    sort: Sort,
    limit: int,
    cursor: str | None,
    keep: Callable[[Doc], bool] | None = None,
) -> Page:
    """A page of devices; ``keep`` filters in Python (for what the server cannot query).

    With ``keep``, a page may hold fewer than ``limit`` items (at most SCAN_MAX documents
    are examined); follow ``next_cursor`` until it is null.
    """
    query = flt.query(tenant_id)
    after = after_filter(sort, cursor)
    full = {"$and": [query, after]} if after else query
    scan = limit + 1 if keep is None else SCAN_MAX
    items: list[Doc] = []
    last: Doc | None = None
    scanned = 0
    async for raw in db[DEVICES].find(full).sort(sort_spec(sort)).limit(scan):
        doc = from_json_text(raw, JSON) or raw
        scanned += 1
        if keep is None or keep(doc):
            if len(items) == limit:
                return Page(items, _cursor(items[-1], sort))
            items.append(doc)
        last = doc
    more = scanned == scan and keep is not None and last is not None
    return Page(items, _cursor(last, sort) if more and last else None)


def _cursor(doc: Doc, sort: Sort) -> str:
    value: Any = doc
    for part in sort.field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return encode_cursor(value, doc["_id"])


async def in_group(db: Db, tenant_id: str, group: str) -> list[Doc]:
    projection = {"_id": 1, "overrides": 1, "desired_config": 1}
    query = {"tenant_id": tenant_id, "group": group, "decommissioned_at": None}
    return [
        from_json_text(d, JSON) or d
        for d in await db[DEVICES].find(query, projection).to_list(None)
    ]


async def count_in_group(db: Db, tenant_id: str, group: str) -> int:
    query = {"tenant_id": tenant_id, "group": group, "decommissioned_at": None}
    return await db[DEVICES].count_documents(query)


# -- desired config ----------------------------------------------------------------------
# History ids carry the hash: two racing writers of the same version never overwrite each
# other's entry; the one whose pointer update lost deletes its own.


def config_id(device_id: str, version: int, hash_: str) -> str:
    return f"{device_id}:{version:010d}:{hash_[:16]}"


def config_doc(
    tenant_id: str, device_id: str, version: int, hash_: str, config: Doc, actor: str, cause: str
) -> Doc:
    return {
        "_id": config_id(device_id, version, hash_),
        "tenant_id": tenant_id,
        "device_id": device_id,
        "version": version,
        "hash": hash_,
        "config": json.dumps(config, separators=(",", ":")),
        "created_at": datetime.now(UTC),
        "actor": actor,
        "cause": cause,
    }


def desired_update(
    device_id: str, expected_version: int | None, version: int, hash_: str, extra: Doc | None = None
) -> UpdateOne:
    """Move the desired-config pointer only if nobody moved it since we read it."""
    now = datetime.now(UTC)
    fields = {
        "desired_config": {"version": version, "hash": hash_, "updated_at": now},
        **to_json_text(extra or {}, JSON),
    }
    return UpdateOne(
        {"_id": device_id, "desired_config.version": expected_version}, {"$set": fields}
    )


async def apply_configs(
    db: Db, configs: list[Doc], updates: list[UpdateOne], expected: dict[str, int | None]
) -> set[str]:
    """Store history entries, then move the pointers; returns the device ids moved.

    ``updates`` are :func:`desired_update` operations in the order of ``configs``, ``expected``
    the pointer version each one requires. On FerretDB a pointer move a concurrent bridge
    update undid (outpost.mongo) is found by reading back after :func:`settle_delay` and
    sent again while the pointer is still at the expected version.
    """
    if not configs:
        return set()
    chunk = await chunk_size(db)
    history = [ReplaceOne({"_id": c["_id"]}, c, upsert=True) for c in configs]
    await bulk_write(db[DEVICE_CONFIGS], history, chunk=chunk)
    pending = {c["device_id"]: op for c, op in zip(configs, updates, strict=True)}
    wanted = {c["device_id"]: c["hash"] for c in configs}
    moved = set[str]()
    ferretdb = await is_ferretdb(db)
    for _ in range(SETTLE_ROUNDS if ferretdb else 1):
        started = time.monotonic()
        await bulk_write(db[DEVICES], list(pending.values()), chunk=chunk)
        if ferretdb:
            await asyncio.sleep(settle_delay((time.monotonic() - started) / len(pending)))
        now = (
            await db[DEVICES]
            .find({"_id": {"$in": list(pending)}}, {"desired_config": 1})
            .to_list(None)
        )
        pointers = {d["_id"]: d.get("desired_config") or {} for d in now}
        moved |= {i for i, p in pointers.items() if p.get("hash") == wanted[i]}
        pending = {
            i: op
            for i, op in pending.items()
            if i not in moved and i in pointers and pointers[i].get("version") == expected.get(i)
        }  # undone: again
        if not pending:
            break
    lost = [c["_id"] for c in configs if c["device_id"] not in moved]
    if lost:
        await db[DEVICE_CONFIGS].delete_many({"_id": {"$in": lost}})
    return moved


async def trim_history(db: Db, device_id: str, newest: int, keep: int) -> None:
    oldest_kept = newest - keep + 1
    if oldest_kept > 1:
        await db[DEVICE_CONFIGS].delete_many(
            {"device_id": device_id, "version": {"$lt": oldest_kept}}
        )


async def get_config(db: Db, tenant_id: str, device_id: str, version: int) -> Doc | None:
    return from_json_text(
        await db[DEVICE_CONFIGS].find_one(
            {"tenant_id": tenant_id, "device_id": device_id, "version": version}
        ),
        CONFIG_JSON,
    )


async def config_history(
    db: Db, tenant_id: str, device_id: str, limit: int, cursor: str | None
) -> Page:
    query = {"tenant_id": tenant_id, "device_id": device_id}
    found = await page(db[DEVICE_CONFIGS], query, Sort("_id", descending=True), limit, cursor)
    return Page([from_json_text(d, CONFIG_JSON) or d for d in found.items], found.next_cursor)
