"""Exactly-once work across scheduler instances, stored in MongoDB (``scheduler_claims``).

Two tools, both plain single-document operations (FerretDB has no transactions):

- :meth:`Claims.claim_firing`: a periodic job's firing at a scheduled time is done by
  the instance that inserts ``{_id: "<job>@<scheduled time>"}`` first; the others get a
  duplicate-key error and skip it. For short, idempotent-ish work (reconcile, snapshots).
- :class:`Lease`: long-running work (one rollout) held by one instance at a time, with an
  expiry and a **fencing token** that grows by one on every takeover. The holder renews
  before each step; when it dies, another instance takes over once ``expires_at`` has
  passed (so takeover is bounded by the lease time plus one tick). The token is written
  into every execution the holder touches, in the same conditional update, so a paused
  or partitioned former holder can no longer mark anything (see :mod:`scheduler.executor`).

Clocks: expiry compares the holders' wall clocks; keep them NTP-synced and the lease
time well above the expected skew. A holder also stops acting ``margin`` before its own
expiry, so a small skew cannot give two live holders.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from outpost.mongo import Document
from scheduler.errors import LeaseLost, StoreError
from schemas.documents import SCHEDULER_CLAIMS

Clock = Callable[[], datetime]

__all__ = ["Claims", "Clock", "LeaseState", "firing_id", "lease_id"]


def firing_id(job: str, scheduled_at: datetime) -> str:
    return f"{job}@{scheduled_at.isoformat(timespec='seconds')}"


def lease_id(name: str) -> str:
    return f"lease:{name}"


@dataclass(frozen=True)
class LeaseState:
    name: str
    token: int
    expires_at: datetime


class Claims:
    """Claims and leases for one scheduler instance (``holder``)."""

    def __init__(self, db: AsyncDatabase[Document], holder: str, clock: Clock,
                 logger: logging.Logger) -> None:
        self._coll = db[SCHEDULER_CLAIMS]
        self.holder = holder
        self._clock = clock
        self._log = logger

    async def claim_firing(self, job: str, scheduled_at: datetime) -> bool:
        """True for exactly one instance per (job, scheduled time)."""
        doc = {"_id": firing_id(job, scheduled_at), "holder": self.holder,
               "claimed_at": self._clock()}
        try:
            await self._coll.insert_one(doc)
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise StoreError(f"claim {job}: {exc}") from exc
        return True

    async def acquire(self, name: str, ttl: timedelta) -> LeaseState | None:
        """Take the lease if it is free or expired (new token); None if someone holds it."""
        now = self._clock()
        query = {"_id": lease_id(name), "$or": [{"expires_at": {"$lte": now}},
                                               {"expires_at": {"$exists": False}}]}
        update = {"$set": {"holder": self.holder, "expires_at": now + ttl, "taken_at": now},
                  "$inc": {"token": 1}}
        try:
            doc = await self._coll.find_one_and_update(query, update, upsert=True,
                                                       return_document=True)
        except DuplicateKeyError:
            return None
        except PyMongoError as exc:
            raise StoreError(f"acquire {name}: {exc}") from exc
        if doc is None:
            return None
        self._log.info("lease acquired", extra={"lease": name, "token": doc["token"]})
        return LeaseState(name, int(doc["token"]), now + ttl)

    async def renew(self, lease: LeaseState, ttl: timedelta) -> LeaseState:
        """Extend our lease; :class:`LeaseLost` if it expired or someone took it over."""
        now = self._clock()
        query = {"_id": lease_id(lease.name), "holder": self.holder, "token": lease.token,
                 "expires_at": {"$gt": now}}
        try:
            result = await self._coll.update_one(query, {"$set": {"expires_at": now + ttl}})
        except PyMongoError as exc:
            raise StoreError(f"renew {lease.name}: {exc}") from exc
        if result.matched_count != 1:
            raise LeaseLost(f"lease {lease.name} token {lease.token} lost")
        return LeaseState(lease.name, lease.token, now + ttl)

    async def hold(self, name: str, ttl: timedelta,
                   current: LeaseState | None) -> LeaseState | None:
        """Renew ``current`` or try to acquire; None when another instance holds it."""
        if current is not None:
            try:
                return await self.renew(current, ttl)
            except LeaseLost:
                self._log.warning("lease lost", extra={"lease": name, "token": current.token})
        return await self.acquire(name, ttl)

    async def release(self, lease: LeaseState) -> None:
        """Let another instance take over at once (graceful stop)."""
        query = {"_id": lease_id(lease.name), "holder": self.holder, "token": lease.token}
        try:
            await self._coll.update_one(query, {"$set": {"expires_at": self._clock()}})
        except PyMongoError as exc:
            raise StoreError(f"release {lease.name}: {exc}") from exc

    def check(self, lease: LeaseState, margin: timedelta) -> None:
        """Raise :class:`LeaseLost` if our own lease ends within ``margin``."""
        if self._clock() + margin >= lease.expires_at:
            raise LeaseLost(f"lease {lease.name} about to expire")
