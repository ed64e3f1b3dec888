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
SECRET_KEYS = {"passphrase": "passphrase_set", "secret": "secret_set", "password": "password_set"}


def redacted(value: Any) -> Any:
    """``value`` with every secret (at any depth) replaced by ``<key>_set: true``: WiFi
    passphrases and RADIUS secrets never reach the audit log (:func:`schemas.wifi.redact`
    for the config's own shape; this catches them wherever a summary holds them)."""
    if isinstance(value, dict):
        return {
            SECRET_KEYS.get(k, k): (v is not None if k in SECRET_KEYS else redacted(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def _summary(value: Any) -> str | None:
    """JSON text, truncated: admin-chosen keys may hold '.' or '$', which Mongo refuses."""
    if value is None:
        return None
    text = json.dumps(redacted(value), default=str, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS] + "…"


def entry(
    who: Principal, action: str, target: str, before: Any = None, after: Any = None
) -> dict[str, Any]:
    """One audit document (inserted by :func:`record`, or many at once by a caller)."""
    return {
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


async def record(
    db: Db, who: Principal, action: str, target: str, before: Any = None, after: Any = None
) -> None:
    await db[AUDIT_LOG].insert_one(entry(who, action, target, before, after))


async def list_entries(
    db: Db, tenant_id: str, limit: int, cursor: str | None, target: str | None = None
) -> Page:
    query: dict[str, Any] = {"tenant_id": tenant_id}
    if target:
        query["target"] = target
    return await page(db[AUDIT_LOG], query, Sort("_id", descending=True), limit, cursor)
