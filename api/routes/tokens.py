"""The caller's tenant and its API tokens (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, status

from api import auth
from api.deps import DEFAULT, Admin, Cursor, Db, Limit, Viewer
from api.errors import NotFound
from api.models import PageOf, TenantPublic, TokenCreate, TokenCreated, TokenPublic
from api.store import audit, tenants
from api.store.base import Doc

router = APIRouter(tags=["tenant"])


def token_public(doc: Doc) -> TokenPublic:
    return TokenPublic.model_validate(doc)


@router.get("/tenant")
async def get_tenant(db: Db, who: Viewer) -> TenantPublic:
    doc = await tenants.get_tenant(db, who.tenant_id)
    if doc is None:
        raise NotFound("tenant not found")
    return TenantPublic(id=doc["_id"], name=doc["name"], created_at=doc["created_at"])


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, db: Db, who: Admin) -> TokenCreated:
    token = auth.new_token()
    doc = await tenants.create_token(db, token, who.tenant_id, body.role, body.name, who.token_id)
    await audit.record(
        db,
        who,
        "token.create",
        f"token:{token.token_id}",
        after={"role": body.role.value, "name": body.name},
    )
    return TokenCreated(**token_public(doc).model_dump(), token=token.secret)


@router.get("/tokens")
async def list_tokens(
    db: Db, who: Admin, limit: Limit = DEFAULT, cursor: Cursor = None
) -> PageOf[TokenPublic]:
    page = await tenants.list_tokens(db, who.tenant_id, limit, cursor)
    return PageOf[TokenPublic](
        items=[token_public(d) for d in page.items], next_cursor=page.next_cursor
    )


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_token(token_id: str, db: Db, who: Admin) -> None:
    doc = await tenants.revoke_token(db, who.tenant_id, token_id)
    if doc is None:
        raise NotFound(f"no active token {token_id!r}")
    await audit.record(
        db,
        who,
        "token.revoke",
        f"token:{token_id}",
        before={"role": doc["role"]},
        after={"revoked": True},
    )
