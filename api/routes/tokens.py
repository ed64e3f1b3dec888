"""The caller's tenant and its API tokens (admins only).

Owner safety: a token cannot revoke itself, and a tenant keeps at least one active admin
token (revocations are revisions of the tenant, so two admins revoking each other at
once cannot both succeed). Lost every admin token anyway? ``outpost admin create-token``
makes a new one from the machine that runs the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, status

from api import auth
from api.deps import DEFAULT, Admin, Cursor, Db, Limit, Viewer
from api.errors import Conflict, NotFound
from api.expiry import check_expiry
from api.models import PageOf, TenantPublic, TokenCreate, TokenCreated, TokenPublic
from api.store import audit, tenants
from api.store.base import Doc
from api.store.revisions import retrying

router = APIRouter(tags=["tenant"])
TokenId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]


def token_public(doc: Doc, last_used_at: datetime | None = None) -> TokenPublic:
    return TokenPublic.model_validate({**doc, "last_used_at": last_used_at})


@router.get("/tenant")
async def get_tenant(db: Db, who: Viewer) -> TenantPublic:
    doc = await tenants.get_tenant(db, who.tenant_id)
    if doc is None:
        raise NotFound("tenant not found")
    return TenantPublic(id=doc["_id"], name=doc["name"], created_at=doc["created_at"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, db: Db, who: Admin) -> TokenCreated:
    now = datetime.now(UTC)
    check_expiry(body.expires_at, now)
    token = auth.new_token()
    doc = await tenants.create_token(
        db, token, who.tenant_id, body.role, body.name, who.token_id, body.expires_at
    )
    await audit.record(
        db,
        who,
        "token.create",
        f"token:{token.token_id}",
        after={"role": body.role.value, "name": body.name, "expires_at": body.expires_at},
    )
    return TokenCreated(**token_public(doc).model_dump(), token=token.secret)


@router.get("/tokens")
async def list_tokens(
    db: Db, who: Admin, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[TokenPublic]:
    page = await tenants.list_tokens(db, who.tenant_id, limit, cursor)
    used = await tenants.last_used(db, who.tenant_id, [d["token_id"] for d in page.items])
    return PageOf[TokenPublic](
        items=[token_public(d, used.get(d["token_id"])) for d in page.items],
        next_cursor=page.next_cursor,
    )


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(token_id: TokenId, db: Db, who: Admin) -> None:
    """Revoke a token of the tenant: not the caller's own, never its last active admin."""
    if token_id == who.token_id:
        raise Conflict("a token cannot revoke itself; revoke it with another admin token")

    async def attempt() -> Doc | None:
        rev = await tenants.tenant_rev(db, who.tenant_id)
        doc = await tenants.get_token(db, who.tenant_id, token_id)
        if rev is None or doc is None or doc.get("revoked_at") is not None:
            raise NotFound(f"no active token {token_id!r}")
        if doc["role"] == auth.Role.ADMIN.value:
            others = set(await tenants.active_admins(db, who.tenant_id)) - {token_id}
            if not others:
                raise Conflict("the tenant's last active admin token cannot be revoked")

        async def revoke() -> None:
            await tenants.revoke_token(db, who.tenant_id, token_id)

        return doc if await tenants.revise_tenant(db, who.tenant_id, rev, revoke) else None

    doc = await retrying(attempt, f"the tokens of tenant {who.tenant_id!r}")
    await audit.record(
        db,
        who,
        "token.revoke",
        f"token:{token_id}",
        before={"role": doc["role"]},
        after={"revoked": True},
    )
