"""Exactly-once work across scheduler instances, stored in MongoDB (``scheduler_claims``).

Both tools rest on one primitive only: **inserting a document with a unique ``_id``**.
Measured on FerretDB v1.24.2 (2026-11-26): conditional updates and
``findAndModify`` are *not* atomic under concurrency (two clients running
``update_one({_id, owner: null}, {$set: {owner: me}})`` at once both matched in 125 of
200 tries; concurrent ``$set`` of different fields of one document lost one of them in
132 of 200), while a duplicate ``_id`` insert is always refused. So no compare-and-set
on an existing document is trusted here; every exclusive step is an insert.

- :meth:`Claims.claim_firing`: a periodic job's firing at a scheduled time is done by
  the instance that inserts ``{_id: "<job>@<scheduled time>"}`` first; the others get a
  duplicate-key error and skip it. For short, idempotent-ish work (reconcile, snapshots).
- leases (:meth:`Claims.acquire`): long-running work (one rollout) held by one instance
  at a time. Token ``n`` of lease ``X`` is the document ``lease:X:n``; whoever inserts
  ``n + 1`` after ``n`` expired holds the lease, and the token is the **fencing token**
  (it grows by one on every takeover). Only the holder ever updates its own document
  (renewal, release), so no two writers race on one document. The holder renews at the
  start of each tick and, in a long tick, between batches (:mod:`scheduler.budget`).
  When the holder dies, another instance takes over once ``expires_at`` has passed:
  takeover is bounded by the lease time plus one tick. See :mod:`scheduler.executor`
  for how the token fences sends.

Clocks: expiry compares the holders' wall clocks; keep them NTP-synced and the lease
time well above the expected skew. A holder also stops acting ``margin`` before its own
expiry, so a small skew cannot give two live holders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.errors import DuplicateKeyError, PyMongoError

from outpost.store import Document, Store
from scheduler.clock import Clock, aware
from scheduler.errors import LeaseLost, StoreError
from schemas.documents import SCHEDULER_CLAIMS

__all__ = ["Claims", "Clock", "LeaseState", "firing_id", "lease_id"]


def firing_id(job: str, scheduled_at: datetime) -> str:
    return f"{job}@{scheduled_at.isoformat(timespec='seconds')}"


def lease_id(name: str, token: int) -> str:
    return f"lease:{name}:{token:012d}"


@dataclass(frozen=True)
class LeaseState:
    name: str
    token: int
    expires_at: datetime


class Claims:
    """Claims and leases for one scheduler instance (``holder``)."""

    def __init__(self, db: Store, holder: str, clock: Clock, logger: logging.Logger) -> None:
        self._coll = db[SCHEDULER_CLAIMS]
        self.holder = holder
        self._clock = clock
        self._log = logger

    async def claim_firing(self, job: str, scheduled_at: datetime) -> bool:
        """True for exactly one instance per (job, scheduled time)."""
        doc = {
            "_id": firing_id(job, scheduled_at),
            "holder": self.holder,
            "claimed_at": self._clock(),
        }
        try:
            await self._coll.insert_one(doc)
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise StoreError(f"claim {job}: {exc}") from exc
        return True

    async def _latest(self, name: str) -> Document | None:
        return await self._coll.find_one({"lease": name}, sort=[("token", -1)])

    async def acquire(self, name: str, ttl: timedelta) -> LeaseState | None:
        """Take the lease if it is free or expired (next token); None if someone holds it."""
        now = self._clock()
        try:
            latest = await self._latest(name)
            if latest is not None and aware(latest["expires_at"]) > now:
                return None
            token = 1 if latest is None else int(latest["token"]) + 1
            await self._coll.insert_one(
                {
                    "_id": lease_id(name, token),
                    "lease": name,
                    "token": token,
                    "holder": self.holder,
                    "taken_at": now,
                    "expires_at": now + ttl,
                }
            )
            await self._coll.delete_many({"lease": name, "token": {"$lt": token - 10}})
        except DuplicateKeyError:
            return None  # another instance took this token first
        except PyMongoError as exc:
            raise StoreError(f"acquire {name}: {exc}") from exc
        self._log.info("lease acquired", extra={"lease": name, "token": token})
        return LeaseState(name, token, now + ttl)

    async def renew(self, lease: LeaseState, ttl: timedelta) -> LeaseState:
        """Extend our lease; :class:`LeaseLost` if it expired or someone took it over.

        Only the holder writes its lease document, so the update races no other writer.
        What it can race is a takeover: another instance that reads the document after
        ``expires_at`` and inserts the next token. That reader sees the new expiry if our
        update was acknowledged before the old expiry; so a renewal acknowledged later
        counts as lost (the lease is then taken again, with a new token, once the
        extended expiry has passed), and a newer token seen after the update as taken
        over. Renewing well before the end (:mod:`scheduler.budget`) makes a late
        acknowledgement rare.
        """
        self.check(lease, timedelta(0))
        now = self._clock()
        try:
            await self._coll.update_one(
                {"_id": lease_id(lease.name, lease.token)}, {"$set": {"expires_at": now + ttl}}
            )
            latest = await self._latest(lease.name)
        except PyMongoError as exc:
            raise StoreError(f"renew {lease.name}: {exc}") from exc
        if latest is None or int(latest["token"]) != lease.token:
            raise LeaseLost(f"lease {lease.name} token {lease.token} taken over")
        if self._clock() >= lease.expires_at:
            raise LeaseLost(f"lease {lease.name} token {lease.token} renewed after its expiry")
        return LeaseState(lease.name, lease.token, now + ttl)

    async def hold(
        self, name: str, ttl: timedelta, current: LeaseState | None
    ) -> LeaseState | None:
        """Renew ``current`` or try to acquire; None when another instance holds it."""
        if current is not None:
            try:
                return await self.renew(current, ttl)
            except LeaseLost:
                self._log.warning("lease lost", extra={"lease": name, "token": current.token})
        return await self.acquire(name, ttl)

    async def release(self, lease: LeaseState) -> None:
        """Let another instance take over at once (graceful stop)."""
        try:
            await self._coll.update_one(
                {"_id": lease_id(lease.name, lease.token)}, {"$set": {"expires_at": self._clock()}}
            )
        except PyMongoError as exc:
            raise StoreError(f"release {lease.name}: {exc}") from exc

    def check(self, lease: LeaseState, margin: timedelta) -> None:
        """Raise :class:`LeaseLost` if our own lease ends within ``margin``."""
        if self._clock() + margin >= lease.expires_at:
            raise LeaseLost(f"lease {lease.name} about to expire")
