"""Annotated dependency aliases for routes: state, database, principal, roles, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from api.auth import TOKEN_PREFIX, Principal, Role, bearer, token_hash
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


_MESSAGES = {
    "missing": "send Authorization: Bearer <api token>",
    "malformed": "send Authorization: Bearer <api token>",
    "unknown": "unknown or revoked token",
    "revoked": "unknown or revoked token",
    "expired": "the token has expired; ask an admin for a new one",
}


def _token_id(token: str) -> str | None:
    """The public id part of ``opt_<id>_<secret>`` (never the secret), if it has one."""
    token_id, sep, _ = token.removeprefix(TOKEN_PREFIX).partition("_")
    return token_id[:12] if sep and token_id.isalnum() else None


def _refuse(state: AppState, request: Request, reason: str, token: str | None) -> Unauthorized:
    """Count and log a failed authentication (without the secret); the 401 to raise."""
    state.metrics.auth_failures.labels(reason).inc()
    state.logger.warning(
        "authentication failed",
        extra={
            "reason": reason,
            "token_id": _token_id(token) if token else None,
            "path": request.url.path,
            "client": request.client.host if request.client else None,
        },
    )
    return Unauthorized(_MESSAGES[reason])


async def current_principal(
    request: Request,
    state: State,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    token = bearer(authorization)
    if token is None:
        raise _refuse(state, request, "missing" if not authorization else "malformed", None)
    found = await tenants.principal_for(state.db, token_hash(token))
    if found.principal is None:
        raise _refuse(state, request, found.failure or "unknown", token)
    await tenants.touch(state.db, found.principal, state.token_seen)
    return found.principal


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
