"""Annotated dependency aliases for routes: state, database, principal, roles, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from api.auth import Principal, Role, bearer, token_hash
from api.errors import Forbidden, Unauthorized
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT
from api.state import AppState
from api.store import tenants
from api.store.base import Db as Database


def get_state(request: Request) -> AppState:
    state: AppState = request.state.app
    return state


State = Annotated[AppState, Depends(get_state)]


def get_db(state: State) -> Database:
    return state.db


Db = Annotated[Database, Depends(get_db)]


async def current_principal(
    db: Db,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    token = bearer(authorization)
    if token is None:
        raise Unauthorized("send Authorization: Bearer <api token>")
    principal = await tenants.principal_for(db, token_hash(token))
    if principal is None:
        raise Unauthorized("unknown or revoked token")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(role: Role) -> object:
    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.role.allows(role):
            raise Forbidden(f"role {principal.role.value} may not do this; needs {role.value}")
        return principal

    return Depends(check)


def RequireRole(role: Role) -> object:
    return require_role(role)


Viewer = CurrentPrincipal
Operator = Annotated[Principal, RequireRole(Role.OPERATOR)]
Admin = Annotated[Principal, RequireRole(Role.ADMIN)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size")]
Cursor = Annotated[str | None, Query(max_length=512, description="From next_cursor")]
DEFAULT = DEFAULT_LIMIT
