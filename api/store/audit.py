"""audit_log: who changed what, when, with a before/after summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from api.auth import Principal
from api.pagination import Sort
from api.store.base import Db, Page, new_id, page
from schemas.documents import AUDIT_LOG

SUMMARY_CHARS = 2000


def _summary(value: Any) -> str | None:
    """JSON text, truncated: admin-chosen keys may hold '.' or '$', which Mongo refuses."""
    if value is None:
        return None
    text = json.dumps(value, default=str, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "…"


async def record(
    db: Db, who: Principal, action: str, target: str, before: Any = None, after: Any = None
) -> None:
    await db[AUDIT_LOG].insert_one(
        {
            "_id": new_id(),
            "tenant_id": who.tenant_id,
            "actor": who.token_id,
            "role": who.role.value,
            "action": action,
            "target": target,
            "at": datetime.now(UTC),
            "before": _summary(before),
            "after": _summary(after),
        }
    )


async def list_entries(
    db: Db, tenant_id: str, limit: int, cursor: str | None, target: str | None = None
) -> Page:
    query: dict[str, Any] = {"tenant_id": tenant_id}
    if target:
        query["target"] = target
    return await page(db[AUDIT_LOG], query, Sort("_id", descending=True), limit, cursor)
