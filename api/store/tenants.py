"""tenants and api_tokens."""

from __future__ import annotations

from datetime import UTC, datetime

from api.auth import NewToken, Principal, Role
from api.pagination import Sort
from api.store.base import Db, Doc, Page, page
from schemas.documents import API_TOKENS, TENANTS


async def create_tenant(db: Db, tenant_id: str, name: str) -> Doc:
    doc = {"_id": tenant_id, "name": name, "created_at": datetime.now(UTC)}
    await db[TENANTS].insert_one(doc)
    return doc


async def get_tenant(db: Db, tenant_id: str) -> Doc | None:
    return await db[TENANTS].find_one({"_id": tenant_id})


async def create_token(
    db: Db, token: NewToken, tenant_id: str, role: Role, name: str, created_by: str | None
) -> Doc:
    doc = {
        "_id": token.hash,
        "token_id": token.token_id,
        "tenant_id": tenant_id,
        "role": role.value,
        "name": name,
        "created_at": datetime.now(UTC),
        "created_by": created_by,
        "revoked_at": None,
    }
    await db[API_TOKENS].insert_one(doc)
    return doc


async def principal_for(db: Db, token_hash: str) -> Principal | None:
    doc = await db[API_TOKENS].find_one({"_id": token_hash, "revoked_at": None})
    if doc is None:
        return None
    return Principal(doc["token_id"], doc["tenant_id"], Role(doc["role"]))


async def list_tokens(db: Db, tenant_id: str, limit: int, cursor: str | None) -> Page:
    # sorted by token_id; the hash (_id) never leaves the database
    sort = Sort("token_id")
    result = await page(db[API_TOKENS], {"tenant_id": tenant_id}, sort, limit, cursor)
    return result


async def revoke_token(db: Db, tenant_id: str, token_id: str) -> Doc | None:
    return await db[API_TOKENS].find_one_and_update(
        {"tenant_id": tenant_id, "token_id": token_id, "revoked_at": None},
        {"$set": {"revoked_at": datetime.now(UTC)}},
    )
