"""tenants, api_tokens, and api_token_usage (when each token was last used).

Revoking a token is a revision of its tenant (:mod:`api.store.revisions`): two admins
revoking each other's tokens at once take turns, so "the last active admin token of a
tenant stays" holds under concurrency, not just for one request at a time.

``last_used_at`` lives in ``api_token_usage``, not in the token's document: FerretDB does
not isolate two concurrent updates of one document, so a "last used" write racing a
revocation could undo it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from api.auth import NewToken, Principal, Role
from api.pagination import Sort
from api.store.base import Db, Doc, Page, page
from api.store.revisions import Revision, revise
from outpost.store import Update
from schemas.documents import API_TOKEN_USAGE, API_TOKENS, TENANTS

USAGE_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per token


async def create_tenant(db: Db, tenant_id: str, name: str) -> Doc:
    doc = {"_id": tenant_id, "name": name, "created_at": datetime.now(UTC), "rev": 0}
    await db[TENANTS].insert_one(doc)
    return doc


async def get_tenant(db: Db, tenant_id: str) -> Doc | None:
    return await db[TENANTS].find_one({"_id": tenant_id})


async def create_token(
    db: Db,
    token: NewToken,
    tenant_id: str,
    role: Role,
    name: str,
    created_by: str | None,
    expires_at: datetime | None = None,
) -> Doc:
    doc = {
        "_id": token.hash,
        "token_id": token.token_id,
        "tenant_id": tenant_id,
        "role": role.value,
        "name": name,
        "created_at": datetime.now(UTC),
        "created_by": created_by,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    await db[API_TOKENS].insert_one(doc)
    return doc


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a presented token turned out to be: a principal, or why not."""

    principal: Principal | None
    failure: str | None = None  # unknown, revoked, expired


async def principal_for(db: Db, token_hash: str, now: datetime | None = None) -> Lookup:
    doc = await db[API_TOKENS].find_one({"_id": token_hash})
    now = now or datetime.now(UTC)
    if doc is None:
        return Lookup(None, "unknown")
    if doc.get("revoked_at") is not None:
        return Lookup(None, "revoked")
    expires = doc.get("expires_at")
    if expires is not None and expires <= now:
        return Lookup(None, "expired")
    return Lookup(Principal(doc["token_id"], doc["tenant_id"], Role(doc["role"])))


async def touch(db: Db, principal: Principal, seen: dict[str, datetime]) -> None:
    """Record that ``principal``'s token was used, at most once per :data:`USAGE_EVERY`
    (``seen``: this instance's memory of its own last writes)."""
    now = datetime.now(UTC)
    last = seen.get(principal.token_id)
    if last is not None and now - last < USAGE_EVERY:
        return
    seen[principal.token_id] = now
    _id = f"{principal.tenant_id}:{principal.token_id}"
    update = {"$set": {"last_used_at": now, "tenant_id": principal.tenant_id}}
    await db.apply(API_TOKEN_USAGE, [Update({"_id": _id}, update, upsert=True)])


async def last_used(db: Db, tenant_id: str, token_ids: Sequence[str]) -> dict[str, datetime]:
    found = await db.find_ids(API_TOKEN_USAGE, [f"{tenant_id}:{t}" for t in token_ids])
    return {d["_id"].split(":", 1)[1]: d["last_used_at"] for d in found}


async def list_tokens(db: Db, tenant_id: str, limit: int, cursor: str | None) -> Page:
    # sorted by token_id; the hash (_id) never leaves the database
    sort = Sort("token_id")
    result = await page(db[API_TOKENS], {"tenant_id": tenant_id}, sort, limit, cursor)
    return result


async def get_token(db: Db, tenant_id: str, token_id: str) -> Doc | None:
    return await db[API_TOKENS].find_one({"tenant_id": tenant_id, "token_id": token_id})


def _active(now: datetime) -> Doc:
    return {"revoked_at": None, "$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


async def active_admins(db: Db, tenant_id: str) -> list[str]:
    query = {"tenant_id": tenant_id, "role": Role.ADMIN.value, **_active(datetime.now(UTC))}
    return [d["token_id"] async for d in db[API_TOKENS].find(query, {"token_id": 1})]


async def tenant_rev(db: Db, tenant_id: str) -> int | None:
    """The tenant's revision (a tenant made before revisions starts at 0); None: no tenant."""
    doc = await get_tenant(db, tenant_id)
    if doc is None:
        return None
    if "rev" not in doc:
        await db[TENANTS].update_one(
            {"_id": tenant_id, "rev": {"$exists": False}}, {"$set": {"rev": 0}}
        )
        return 0
    return int(doc["rev"])


async def revise_tenant(
    db: Db, tenant_id: str, rev: int, change: Callable[[], Awaitable[None]]
) -> bool:
    """Run ``change`` as revision ``rev + 1`` of the tenant; False if another request holds
    it (read again and retry)."""

    async def held(_: list[Revision]) -> None:
        await change()

    update = {"$set": {"tokens_changed_at": datetime.now(UTC)}}
    done = await revise(db, TENANTS, [Revision(tenant_id, rev, update)], before_write=held)
    return tenant_id in done


async def revoke_token(db: Db, tenant_id: str, token_id: str) -> None:
    await db[API_TOKENS].update_one(
        {"tenant_id": tenant_id, "token_id": token_id, "revoked_at": None},
        {"$set": {"revoked_at": datetime.now(UTC)}},
    )
