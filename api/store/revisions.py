"""One writer per revision of an api document: compare-and-set by a unique insert.

Several api requests (in one process or many) may change the same device, group or
rollout at once. FerretDB v1 does not isolate two concurrent updates of one document
(both match a conditional filter, and the later rewrite undoes the earlier), so a
conditional update alone cannot be a compare-and-set. Each api document therefore
carries ``rev``, and a request that read revision ``r`` writes ``r + 1`` in three steps:

1. **lock**: insert ``revisions/<collection>:<id>:<r + 1>``. Both servers refuse a second
   insert of one ``_id``, so exactly one request holds revision ``r + 1``;
2. whatever must exist before the document says so (a config history entry), written by
   the holder only;
3. **write** the document with the filter ``{_id, rev: r}``, setting ``rev: r + 1``. Only
   the holder of ``r + 1`` writes while the document is at ``r``, so no concurrent update
   races it; a holder that read an older revision matches nothing.

A request that loses (the lock exists, or the document moved past ``r``) reads again and
retries, or answers 412 if what it read was a precondition (If-Match). A lock whose
holder died between (1) and (3) would block revision ``r + 1`` for good: a lock older than
:data:`LOCK_TTL` on a document still at ``r`` is removed, and the next attempt takes it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from api.errors import Conflict
from outpost.store import Delete, Document, Insert, Store, Update
from schemas.documents import REVISIONS

__all__ = ["LOCK_TTL", "Revision", "lock_id", "retrying", "revise"]

LOCK_TTL = timedelta(seconds=15)
ATTEMPTS = 8
T = TypeVar("T")


def lock_id(collection: str, doc_id: str, rev: int) -> str:
    return f"{collection}:{doc_id}:{rev:012d}"


@dataclass(frozen=True, slots=True)
class Revision:
    """Move document ``doc_id`` from ``rev`` to ``rev + 1`` with ``update``."""

    doc_id: str
    rev: int
    update: Document  # a MongoDB update document; ``rev`` is set here


async def revise(
    store: Store,
    collection: str,
    revisions: Sequence[Revision],
    *,
    before_write: Callable[[list[Revision]], Awaitable[None]] | None = None,
) -> set[str]:
    """Apply the revisions this request can hold; returns the ids written.

    ``before_write`` runs for the held revisions between the lock and the write.
    """
    if not revisions:
        return set()
    now = datetime.now(UTC)
    locks = [
        Insert({"_id": lock_id(collection, r.doc_id, r.rev + 1), "at": now}) for r in revisions
    ]
    taken = await store.apply(REVISIONS, locks)
    busy = set(taken.duplicates) | set(taken.errors)
    held = [r for i, r in enumerate(revisions) if i not in busy]
    if busy:
        await _clear_stale([revisions[i] for i in busy], store, collection, now)
    if not held:
        return set()
    if before_write is not None:
        await before_write(held)
    writes = [
        Update(
            {"_id": r.doc_id, "rev": r.rev},
            {**r.update, "$set": {**r.update.get("$set", {}), "rev": r.rev + 1}},
        )
        for r in held
    ]
    results = await store.each(collection, writes)
    done = {r.doc_id for r, result in zip(held, results, strict=True) if result.matched}
    # A written revision frees the lock before it; a failed attempt frees its own.
    freed = [lock_id(collection, r.doc_id, r.rev + (r.doc_id not in done)) for r in held]
    await store.apply(REVISIONS, [Delete({"_id": i}) for i in freed])
    return done


async def _clear_stale(busy: list[Revision], store: Store, collection: str, now: datetime) -> None:
    """Remove locks whose holder died: older than LOCK_TTL on a document still at ``rev``."""
    ids = [lock_id(collection, r.doc_id, r.rev + 1) for r in busy]
    old = (
        await store[REVISIONS].find({"_id": {"$in": ids}, "at": {"$lt": now - LOCK_TTL}}).to_list()
    )
    if old:
        await store.apply(REVISIONS, [Delete({"_id": d["_id"], "at": d["at"]}) for d in old])


async def retrying(attempt: Callable[[], Awaitable[T | None]], what: str) -> T:
    """Run ``attempt`` (read, decide, :func:`revise`) until it returns a result.

    ``None`` means it lost a race; it reads again after a short random pause. After
    :data:`ATTEMPTS` losses the request answers 409.
    """
    for n in range(ATTEMPTS):
        result = await attempt()
        if result is not None:
            return result
        await asyncio.sleep(random.uniform(0, 0.02 * 2**n))
    raise Conflict(f"{what} is being changed by other requests right now; retry")
