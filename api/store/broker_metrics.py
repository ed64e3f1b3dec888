"""Snapshots of the broker's ``$SYS`` metrics, written by the scheduler."""

from __future__ import annotations

from datetime import datetime

from api.store.base import Db, Doc
from schemas.documents import BROKER_METRICS


async def latest(db: Db) -> Doc | None:
    return await db[BROKER_METRICS].find_one({}, sort=[("at", -1)])


async def at_or_before(db: Db, when: datetime) -> Doc | None:
    return await db[BROKER_METRICS].find_one({"at": {"$lte": when}}, sort=[("at", -1)])
