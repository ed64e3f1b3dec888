"""The tenant's audit log, newest first."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import DEFAULT, Cursor, Db, Limit, Viewer
from api.models import AuditEntry, PageOf
from api.store import audit

router = APIRouter(tags=["audit"])


@router.get("/audit")
async def list_audit(
    db: Db,
    who: Viewer,
    limit: Limit = DEFAULT,
    cursor: Cursor = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
) -> PageOf[AuditEntry]:
    page = await audit.list_entries(db, who.tenant_id, limit, cursor, target)
    items = [
        AuditEntry(id=d["_id"], **{k: v for k, v in d.items() if k != "_id"}) for d in page.items
    ]
    return PageOf[AuditEntry](items=items, next_cursor=page.next_cursor)
