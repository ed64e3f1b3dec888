"""MongoDB adapter: the writes a planned batch needs, the dead-letter ring, the lookups.

The bridge writes only its own documents (:mod:`schemas.documents`): ``device_presence``
(presence), ``device_status`` (state, config ack), each with the last seen time of its
own channel, ``job_reports`` and ``dead_letters``. A batch is written in two rounds at
most:

1. what the database holds is known from :class:`StoredKeys`: a first read of each
   document (one query per collection and batch, for documents not seen before), then
   this instance's own writes. Replays and repeats are dropped there; a message whose
   document does not exist yet becomes an insert, every other one a conditional update
   (:func:`bridge.batch.update_op`), whose condition still decides;
2. an insert refused as a duplicate means another instance created the document
   meanwhile: that message is sent again as the conditional update, which is then
   correct whatever that instance stored.

So an older message never overwrites a newer one, whatever the arrival order, redelivery
or number of instances, and no write is read back. A write the database refuses for
good (a value it cannot store) is not retried: its message is dead-lettered with reason
``store_refused`` and acknowledged with the rest. A transient error (the database is
away) raises :class:`~bridge.errors.StoreUnavailable` and nothing is acknowledged.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pymongo.errors import OperationFailure, PyMongoError

from bridge.batch import (
    STORED_KEYS,
    Plan,
    Registered,
    Skip,
    Target,
    insert_op,
    skip_reason,
    stored_field,
    target,
    update_op,
    value,
)
from bridge.decode import Accepted, Rejection
from bridge.errors import StoreError, StoreUnavailable
from outpost.store import TRANSIENT, Applied, Document, Insert, Replace, Store, Write
from schemas.documents import (
    BROKER_EPOCHS,
    DEAD_LETTERS,
    DEVICES,
    JOB_EXECUTIONS,
    BrokerEpochDoc,
)
from schemas.protocol import RejectReason

__all__ = [
    "KnownIds",
    "MongoSink",
    "StoredKeys",
    "WriteCounts",
    "dead_letter_id",
    "dead_letter_op",
    "mapped",
]

_SAMPLE_BYTES = 512
HEAD = 1024  # writes of a batch sent before the rest is built (MongoSink.write)
BUILD_SLICE = 128  # writes built between two turns of the event loop (~2.5 ms)
T = TypeVar("T")


async def mapped(call: Awaitable[T]) -> T:
    """Await a pymongo call with its errors turned into ours."""
    try:
        return await call
    except TRANSIENT as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except OperationFailure as exc:
        if exc.has_error_label("RetryableWriteError"):
            raise StoreUnavailable(str(exc)) from exc
        raise StoreError(str(exc)) from exc
    except PyMongoError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


def dead_letter_id(reason: RejectReason, slot: int) -> str:
    return f"{reason.value}:{slot}"


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def printable(text: str) -> str:
    """``text`` without control characters (a rejected payload may hold any byte; the
    database must still take its sample)."""
    return _CONTROL.sub("\ufffd", text)


def dead_letter_op(rejection: Rejection, slot: int) -> Replace:
    """Keep a sample in a ring of slots per reason: the collection stays bounded."""
    inbound = rejection.inbound
    doc: Document = {
        "reason": rejection.reason.value,
        "detail": printable(rejection.detail[:1024]),
        "topic": printable(inbound.topic[:256]),
        "size": len(inbound.payload),
        "sample": printable(inbound.payload[:_SAMPLE_BYTES].decode("utf-8", errors="replace")),
        "received_at": inbound.received_at,
    }
    return Replace({"_id": dead_letter_id(rejection.reason, slot)}, doc, upsert=True)


@dataclass
class WriteCounts:
    """What one batch changed (``modified``) out of what it sent (``ops``)."""

    ops: int = 0
    modified: int = 0  # documents inserted or changed
    skipped: int = 0  # not sent: the pre-read showed the stored data already as new
    skips: Counter[Skip] = field(default_factory=Counter)  # messages not written, by reason
    raced: int = 0  # inserts another instance beat: sent again as conditional updates
    refused: list[Rejection] = field(default_factory=list)  # the database refused them
    dead_letters: int = 0
    dead_letters_lost: int = 0  # samples not stored (slot race between instances)
    read_s: float = 0.0
    update_s: float = 0.0


class MongoSink:
    """Writes planned batches through a :class:`~outpost.store.Store` it does not own."""

    def __init__(
        self,
        store: Store,
        *,
        dead_letter_cap: int,
        state_refresh: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._store = store
        self._known = StoredKeys()
        self._cap = dead_letter_cap
        self._refresh = state_refresh
        self._clock = clock
        self._slots: dict[RejectReason, int] = {}
        self._offset = secrets.randbelow(dead_letter_cap)  # instances overwrite different slots

    def _next_slot(self, reason: RejectReason) -> int:
        n = self._slots.get(reason, 0)
        self._slots[reason] = n + 1
        return (self._offset + n) % self._cap

    def dead_letter_ops(self, rejections: Iterable[Rejection]) -> list[Replace]:
        """One replace per slot: within a batch a later sample overwrites an earlier one."""
        by_id: dict[str, Replace] = {}
        for rejection in rejections:
            slot = self._next_slot(rejection.reason)
            by_id[dead_letter_id(rejection.reason, slot)] = dead_letter_op(rejection, slot)
        return list(by_id.values())

    async def write(self, planned: Plan, now: datetime) -> WriteCounts:
        """Write a batch, then its dead letters. Raises our errors."""
        counts = WriteCounts()
        started = time.monotonic()
        await self._learn(planned.writes)
        counts.read_s = time.monotonic() - started
        refresh_before = now - self._refresh
        known = self._known
        pending = []
        for item in planned.writes:
            reason = skip_reason(item, known.view(target(item)), refresh_before)
            if reason is None:
                pending.append(item)
            else:
                counts.skips[reason] += 1
        counts.skips[Skip.COALESCED] += planned.accepted - len(planned.writes)
        counts.skipped = len(planned.writes) - len(pending)
        started = time.monotonic()
        # The first HEAD writes go out at once and the rest are built while they are in
        # flight, a slice per turn of the event loop: building 16,000 writes takes ~0.3 s,
        # which left the database idle at the start of every large batch.
        head, rest = pending[:HEAD], pending[HEAD:]
        first, stored = self._writes(head, planned.tenants, refresh_before)
        (later, stored_later), raced = await asyncio.gather(
            self._build(rest, planned.tenants, refresh_before),
            self._apply(head, first, counts),
        )
        raced += await self._apply(rest, later, counts)
        stored += stored_later
        if raced:
            counts.raced = len(raced)
            await self._apply(raced, [update_op(i, refresh_before) for i in raced], counts)
        counts.update_s = time.monotonic() - started
        refused = {id(r.inbound) for r in counts.refused}
        for item, v in zip(pending, stored, strict=True):
            if id(item.inbound) not in refused:
                known.wrote(item, v)
        await self._dead_letters([*planned.rejections, *counts.refused], counts)
        return counts

    def _writes(
        self, items: Sequence[Accepted], tenants: Mapping[str, str | None], refresh_before: datetime
    ) -> tuple[list[Write], list[Document]]:
        """Each item's write (an insert if its document is not known to exist, else the
        conditional update) and what it stores (built once, for the write and for
        :class:`StoredKeys`)."""
        stored = [value(i) for i in items]
        writes: list[Write] = [
            update_op(i, refresh_before, v)
            if self._known.exists(target(i))
            else insert_op(i, tenants.get(i.device_id), v)
            for i, v in zip(items, stored, strict=True)
        ]
        return writes, stored

    async def _build(
        self, items: Sequence[Accepted], tenants: Mapping[str, str | None], refresh_before: datetime
    ) -> tuple[list[Write], list[Document]]:
        """:meth:`_writes` a slice at a time, yielding to the event loop in between."""
        writes: list[Write] = []
        stored: list[Document] = []
        for start in range(0, len(items), BUILD_SLICE):
            await asyncio.sleep(0)
            more, values = self._writes(items[start : start + BUILD_SLICE], tenants, refresh_before)
            writes += more
            stored += values
        return writes, stored

    async def _apply(
        self, items: Sequence[Accepted], writes: Sequence[Write], counts: WriteCounts
    ) -> list[Accepted]:
        """Apply per collection; returns the items whose insert lost a race."""
        by_collection: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            by_collection.setdefault(target(item)[0], []).append(index)
        raced: list[Accepted] = []
        for collection, indexes in by_collection.items():
            applied: Applied = await mapped(
                self._store.apply(collection, [writes[i] for i in indexes])
            )
            counts.ops += len(indexes)
            counts.modified += applied.modified + applied.inserted + applied.upserted
            raced += [items[indexes[i]] for i in applied.duplicates]
            for i, error in applied.errors.items():
                counts.refused.append(
                    Rejection(items[indexes[i]].inbound, RejectReason.STORE_REFUSED, error)
                )
        return raced

    async def _dead_letters(self, rejections: Sequence[Rejection], counts: WriteCounts) -> None:
        letters = self.dead_letter_ops(rejections)
        if not letters:
            return
        counts.dead_letters = len(letters)
        applied = await mapped(self._store.apply(DEAD_LETTERS, letters))
        # Two instances filling the same ring slot at once may see a duplicate key on the
        # upsert: the slot holds a sample either way, and the rejections are counted.
        counts.dead_letters_lost = len(applied.duplicates) + len(applied.errors)

    async def _learn(self, items: Sequence[Accepted]) -> None:
        """Read the stored keys of documents this instance has not seen yet.

        One query per collection for the whole batch; afterwards the instance's own
        writes keep :class:`StoredKeys` current, so a running bridge reads a document
        once, not once per message.
        """
        wanted: dict[str, set[str]] = {}
        for t in self._known.unknown(target(i) for i in items):
            wanted.setdefault(t[0], set()).add(t[1])
        for collection, ids in wanted.items():
            found = await self._find(collection, sorted(ids), list(STORED_KEYS[collection]))
            self._known.read(collection, ids, found)

    async def _find(self, collection: str, ids: list[str], fields: list[str]) -> list[Document]:
        return await mapped(self._store.find_ids(collection, ids, dict.fromkeys(fields, 1)))

    async def devices(self, ids: Iterable[str]) -> dict[str, Registered]:
        """Which of ``ids`` are registered devices, with their tenant and key epoch."""
        docs = await self._find(DEVICES, sorted(set(ids)), ["tenant_id", "key_epoch"])
        return {
            str(d["_id"]): Registered(d.get("tenant_id"), int(d.get("key_epoch") or 0))
            for d in docs
        }

    async def executions(self, ids: Iterable[str]) -> dict[str, Registered]:
        """Which of ``ids`` are job executions the scheduler created, with their tenant."""
        docs = await self._find(JOB_EXECUTIONS, sorted(set(ids)), ["tenant_id"])
        return {str(d["_id"]): Registered(d.get("tenant_id")) for d in docs}

    async def ping(self) -> None:
        await mapped(self._store.db.command("ping"))

    async def latest_epoch(self) -> datetime | None:
        """The latest broker epoch recorded (:mod:`bridge.epochs`); ``_id`` is
        ``start:<UTC ISO time>``, so the primary index gives it in order."""
        found = await mapped(
            self._store[BROKER_EPOCHS].find_one({}, {"started_at": 1}, sort=[("_id", -1)])
        )
        return found["started_at"] if found else None

    async def record_epoch(self, epoch: BrokerEpochDoc) -> bool:
        """Insert an epoch; False if it was already recorded (by us or another instance)."""
        applied = await mapped(self._store.apply(BROKER_EPOCHS, [Insert(epoch.to_mongo())]))
        if applied.errors:
            raise StoreError(f"broker epoch refused: {applied.errors}")
        return applied.inserted == 1


class StoredKeys:
    """What the database holds for the bridge's documents, as far as this instance knows.

    Filled by a first read of each document and by every write this instance makes
    afterwards. Keys in the database only grow, so what is remembered is never ahead of
    the database for a newer message: another instance may have stored something newer
    (the conditional update then changes nothing), but nothing older than remembered. A
    view is shaped like the stored document's projection (:func:`bridge.batch.needed`).
    After ``capacity`` documents it forgets everything and reads again.
    """

    def __init__(self, capacity: int = 500_000) -> None:
        self._capacity = capacity
        self._views: dict[Target, dict[str, Any]] = {}
        self._absent: set[Target] = set()

    def unknown(self, targets: Iterable[Target]) -> set[Target]:
        return {t for t in targets if t not in self._views and t not in self._absent}

    def read(self, collection: str, ids: Iterable[str], found: Iterable[Document]) -> None:
        missing = {(collection, i) for i in ids}
        if len(self._views) + len(self._absent) + len(missing) > self._capacity:
            self._views.clear()  # bounded memory: documents are read again when needed
            self._absent.clear()
        for doc in found:
            t = (collection, str(doc["_id"]))
            self._views[t] = doc
            missing.discard(t)
        self._absent |= missing

    def exists(self, t: Target) -> bool:
        return t in self._views

    def view(self, t: Target) -> Mapping[str, Any] | None:
        return self._views.get(t)

    def wrote(self, item: Accepted, written: Mapping[str, Any] | None = None) -> None:
        """Remember what a write of ``item`` (its :func:`~bridge.batch.value`,
        ``written``, when known) left (or found newer) in the database."""
        t = target(item)
        self._absent.discard(t)
        view = self._views.setdefault(t, {"_id": t[1]})
        if written is None:
            written = value(item)
        name = stored_field(item)
        keep: dict[str, Any] = {k: written[k] for k in ("k", "h", "updated_at") if k in written}
        if name:
            view[name] = keep
        else:
            view.update(keep)


REFRESH_AHEAD = 0.25  # of ``known_ttl``: ids due this soon are read again with one due now


class KnownIds:
    """Ids that have a document, with what the bridge needs of it; positives cached for
    ``known_ttl`` seconds, negatives for ``unknown_ttl``.

    A device is registered by the api before it can connect (the broker's ACL needs its
    credentials), and an execution exists before its command is sent, so an id seen once
    stays valid; it is read again after ``known_ttl`` only to learn a changed key epoch
    (an admin reset the device's ordering keys) or that it is gone. When one id is due,
    every cached id due within a quarter of ``known_ttl`` is read again with it, in the
    same lookup: a fleet is re-read in one go each ``known_ttl``, which the store answers
    with one read of the collection on FerretDB (:meth:`outpost.store.Store.find_ids`),
    instead of one query per device spread over the interval (20,000 devices: ~2 s of
    the database every 5 minutes, not ~18 s). An unknown id is asked again after
    ``unknown_ttl``, so a flood of messages for unknown ids costs one query per id and
    TTL, not one per message.
    """

    def __init__(
        self,
        lookup: Callable[[Iterable[str]], Awaitable[Mapping[str, Registered]]],
        *,
        unknown_ttl: float,
        known_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 1_000_000,
    ) -> None:
        self._lookup = lookup
        self._ttl = unknown_ttl
        self._known_ttl = known_ttl
        self._clock = clock
        self._capacity = capacity
        self._known: dict[str, tuple[Registered, float]] = {}  # id -> (facts, valid until)
        self._unknown_until: dict[str, float] = {}

    def to_ask(self, ids: Iterable[str], now: float) -> set[str]:
        """Ids neither known (and fresh) nor remembered as unknown (pure)."""
        return {
            i
            for i in ids
            if (i not in self._known or self._known[i][1] <= now)
            and self._unknown_until.get(i, 0.0) <= now
        }

    def due(self, until: float) -> set[str]:
        """Known ids whose facts are stale by ``until``."""
        return {i for i, (_, valid_until) in self._known.items() if valid_until <= until}

    async def known(self, ids: Iterable[str]) -> dict[str, Registered]:
        ids = set(ids)
        now = self._clock()
        ask = self.to_ask(ids, now)
        if not ask.isdisjoint(self._known):  # stale facts: refresh everything due soon
            ask |= self.due(now + self._known_ttl * REFRESH_AHEAD)
        if ask:
            found = await self._lookup(ask)
            if len(self._known) + len(found.keys() - self._known.keys()) > self._capacity:
                self._known.clear()  # bounded memory; the next batches ask again
            ttl = self._known_ttl
            self._known.update((i, (facts, now + ttl)) for i, facts in found.items())
            for i in ask - found.keys():
                self._known.pop(i, None)  # deleted since (decommissioned for good)
                self._unknown_until[i] = now + self._ttl
            if len(self._unknown_until) > 100_000:
                self._unknown_until = {i: t for i, t in self._unknown_until.items() if t > now}
        return {i: self._known[i][0] for i in ids if i in self._known}
