"""groups: per-tenant config templates, ``_id`` = ``{tenant}:{name}``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from api.pagination import Sort
from api.store.base import Db, page
from api.store.revisions import Revision, revise
from schemas.documents import GROUPS, GroupDoc, to_json_text


def group_id(tenant_id: str, name: str) -> str:
    return f"{tenant_id}:{name}"


async def get(db: Db, tenant_id: str, name: str) -> GroupDoc | None:
    raw = await db[GROUPS].find_one({"_id": group_id(tenant_id, name), "tenant_id": tenant_id})
    return GroupDoc.model_validate(raw) if raw else None


async def create(db: Db, tenant_id: str, name: str, template: dict[str, Any]) -> GroupDoc:
    doc = GroupDoc(
        id=group_id(tenant_id, name),
        tenant_id=tenant_id,
        name=name,
        template=template,
        version=1,
        updated_at=datetime.now(UTC),
    )
    await db[GROUPS].insert_one(doc.to_mongo())
    return doc


async def replace_template(db: Db, group: GroupDoc, template: dict[str, Any]) -> bool:
    """The next template version, as the next revision of ``group``; False if it moved."""
    update = {
        "$set": {
            "template": to_json_text(template),
            "version": group.version + 1,
            "updated_at": datetime.now(UTC),
        }
    }
    return group.id in await revise(db, GROUPS, [Revision(group.id, group.rev, update)])


async def delete(db: Db, tenant_id: str, name: str) -> bool:
    result = await db[GROUPS].delete_one({"_id": group_id(tenant_id, name)})
    return result.deleted_count == 1


async def find(
    db: Db, tenant_id: str, limit: int, cursor: str | None
) -> tuple[list[GroupDoc], str | None]:
    found = await page(db[GROUPS], {"tenant_id": tenant_id}, Sort("_id"), limit, cursor)
    return [GroupDoc.model_validate(d) for d in found.items], found.next_cursor
