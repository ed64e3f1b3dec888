"""groups: per-tenant config templates, ``_id`` = ``{tenant}:{name}``."""

from __future__ import annotations

from datetime import UTC, datetime

from api.pagination import Sort
from api.store.base import Db, Doc, Page, from_json_text, page, to_json_text
from schemas.documents import GROUPS

JSON = ("template",)


def group_id(tenant_id: str, name: str) -> str:
    return f"{tenant_id}:{name}"


async def get(db: Db, tenant_id: str, name: str) -> Doc | None:
    doc = await db[GROUPS].find_one({"_id": group_id(tenant_id, name), "tenant_id": tenant_id})
    return from_json_text(doc, JSON)


async def create(db: Db, tenant_id: str, name: str, template: Doc) -> Doc:
    doc = {
        "_id": group_id(tenant_id, name),
        "tenant_id": tenant_id,
        "name": name,
        "template": template,
        "version": 1,
        "updated_at": datetime.now(UTC),
    }
    await db[GROUPS].insert_one(to_json_text(doc, JSON))
    return doc


async def replace_template(
    db: Db, tenant_id: str, name: str, template: Doc, expected_version: int
) -> Doc | None:
    """Conditional on the version read (If-Match); None if it moved meanwhile."""
    fields = to_json_text({"template": template, "updated_at": datetime.now(UTC)}, JSON)
    return from_json_text(
        await db[GROUPS].find_one_and_update(
            {"_id": group_id(tenant_id, name), "version": expected_version},
            {"$set": fields, "$inc": {"version": 1}},
            return_document=True,
        ),
        JSON,
    )


async def delete(db: Db, tenant_id: str, name: str) -> bool:
    result = await db[GROUPS].delete_one({"_id": group_id(tenant_id, name)})
    return result.deleted_count == 1


async def find(db: Db, tenant_id: str, limit: int, cursor: str | None) -> Page:
    found = await page(db[GROUPS], {"tenant_id": tenant_id}, Sort("_id"), limit, cursor)
    return Page([from_json_text(d, JSON) or d for d in found.items], found.next_cursor)
