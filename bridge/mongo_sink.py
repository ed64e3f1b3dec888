"""MongoDB adapter: conditional updates built from accepted messages, and their writes.

Every update filters on ``_id`` plus "the stored key ``k`` is missing or older", so
an older message never overwrites a newer one, whatever the arrival order, redelivery
or number of bridge instances. Nothing is upserted: a message for a device without a
devices document (or for a job execution the scheduler never created) changes nothing.

Identical state produces no write: ``state.h`` holds a hash of the state's content
(:meth:`StateMessage.content`, i.e. without key, time and uptime) and the filter also
requires ``state.h`` to differ. Trade-off: the stored ``state.k`` is not advanced by a
repeated identical state, so a *different* state that is older than that repeat but
newer than the stored one, and that arrives after it (only possible when two bridge
instances race or a message is redelivered late), is still applied; the device's next
change corrects it. The alternative, advancing ``k`` on every repeat, is a write per
message.

pymongo errors are mapped here: :data:`TRANSIENT` ones become
:class:`~bridge.errors.StoreUnavailable` (retry), any other :class:`StoreError`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)
from pymongo.operations import ReplaceOne, UpdateOne

from bridge.batch import Plan, content_hash, needed, stored_field
from bridge.decode import Accepted, Rejection
from bridge.errors import StoreError, StoreUnavailable
from outpost import mongo
from outpost.mongo import Document, WriteOp
from schemas.documents import DEAD_LETTERS, DEVICES, JOB_EXECUTIONS, execution_id, order_key_str
from schemas.protocol import JobStatusMessage, PresenceMessage, RejectReason, StateMessage

__all__ = [
    "TRANSIENT",
    "KnownDevices",
    "MongoSink",
    "WriteCounts",
    "content_hash",
    "dead_letter_id",
    "dead_letter_op",
    "target",
    "update_op",
]

# AutoReconnect, NetworkTimeout and ServerSelectionTimeoutError are ConnectionFailures.
TRANSIENT: tuple[type[PyMongoError], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)
_SAMPLE_BYTES = 512
T = TypeVar("T")


def _older(field: str, k: str) -> list[Document]:
    return [{field: {"$exists": False}}, {field: {"$lt": k}}]


def _presence(message: PresenceMessage, at: datetime) -> tuple[Document, Document]:
    k = order_key_str(message.key)
    value = {"status": message.status.value, "reason": message.reason, "since": at, "k": k}
    return ({"$or": _older("presence.k", k)}, {"presence": value})


def _state(message: StateMessage, at: datetime) -> tuple[Document, Document]:
    k, h = order_key_str(message.key), content_hash(message)
    config = message.config.model_dump(mode="json") if message.config else None
    value = {
        "firmware": message.firmware,
        "hardware_model": message.hardware_model,
        "uptime_s": message.uptime_s,
        "counters": dict(message.counters),
        "config": config,
        "h": h,
        "k": k,
        "updated_at": at,
    }
    return ({"$or": _older("state.k", k), "state.h": {"$ne": h}}, {"state": value})


def _job(message: JobStatusMessage, at: datetime) -> tuple[Document, Document]:
    k = order_key_str(message.key)
    value = {
        "status": message.status.value,
        "progress": message.progress,
        "reason": message.reason,
        "firmware": message.firmware,
        "k": k,
        "updated_at": at,
    }
    return ({"$or": _older("report.k", k)}, {"report": value})


def target(item: Accepted) -> tuple[str, str]:
    """The collection and ``_id`` a message updates."""
    message = item.message
    if isinstance(message, JobStatusMessage):
        return JOB_EXECUTIONS, execution_id(message.job_id, message.device_id)
    return DEVICES, item.device_id


def update_op(item: Accepted) -> tuple[str, UpdateOne]:
    """The collection and the conditional update for one accepted message."""
    message, at = item.message, item.inbound.received_at
    if isinstance(message, PresenceMessage):
        condition, values = _presence(message, at)
    elif isinstance(message, StateMessage):
        condition, values = _state(message, at)
    else:
        condition, values = _job(message, at)
        _id = execution_id(message.job_id, message.device_id)
        return JOB_EXECUTIONS, UpdateOne({"_id": _id, **condition}, {"$set": values})
    values["last_seen"] = at
    return DEVICES, UpdateOne({"_id": item.device_id, **condition}, {"$set": values})


def dead_letter_id(reason: RejectReason, slot: int) -> str:
    return f"{reason.value}:{slot}"


def dead_letter_op(rejection: Rejection, slot: int) -> ReplaceOne[Document]:
    """Keep a sample in a ring of slots per reason: the collection stays bounded."""
    inbound = rejection.inbound
    doc: Document = {
        "reason": rejection.reason.value,
        "detail": rejection.detail[:1024],
        "topic": inbound.topic[:256],
        "size": len(inbound.payload),
        "sample": inbound.payload[:_SAMPLE_BYTES].decode("utf-8", errors="replace"),
        "received_at": inbound.received_at,
    }
    return ReplaceOne({"_id": dead_letter_id(rejection.reason, slot)}, doc, upsert=True)


@dataclass
class WriteCounts:
    """What one batch changed (``modified``) out of what it sent (``ops``)."""

    ops: int = 0
    modified: int = 0
    skipped: int = 0  # not sent: the pre-read showed the stored data already as new
    rewritten: int = 0  # sent again: a read-back showed the write was lost (FerretDB)
    dead_letters: int = 0
    dead_letters_lost: int = 0  # samples not stored (slot race between instances)
    read_s: float = 0.0  # pre-read and read-backs
    update_s: float = 0.0  # conditional updates (resends included)


async def _mapped(call: Awaitable[T]) -> T:
    """Await a pymongo call with its errors turned into ours."""
    try:
        return await call
    except BulkWriteError as exc:
        raise StoreError(f"bulk write failed: {str(exc.details)[:500]}") from exc
    except TRANSIENT as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
    except OperationFailure as exc:
        if exc.has_error_label("RetryableWriteError"):
            raise StoreUnavailable(str(exc)) from exc
        raise StoreError(str(exc)) from exc
    except PyMongoError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc


class MongoSink:
    """Writes planned batches; owns no client (it is handed the database)."""

    def __init__(
        self,
        db: AsyncDatabase[Document],
        *,
        chunk: int,
        dead_letter_cap: int,
        verify_rounds: int = 0,
    ) -> None:
        self._db = db
        self._chunk = chunk
        self._verify_rounds = verify_rounds
        self._cap = dead_letter_cap
        self._slots: dict[RejectReason, int] = {}
        self._offset = secrets.randbelow(dead_letter_cap)  # instances overwrite different slots

    def _next_slot(self, reason: RejectReason) -> int:
        n = self._slots.get(reason, 0)
        self._slots[reason] = n + 1
        return (self._offset + n) % self._cap

    def dead_letter_ops(self, rejections: Iterable[Rejection]) -> list[ReplaceOne[Document]]:
        """One replace per slot: within a batch a later sample overwrites an earlier one."""
        by_id: dict[str, ReplaceOne[Document]] = {}
        for rejection in rejections:
            slot = self._next_slot(rejection.reason)
            by_id[dead_letter_id(rejection.reason, slot)] = dead_letter_op(rejection, slot)
        return list(by_id.values())

    async def write(self, planned: Plan) -> WriteCounts:
        """Write a batch: updates by collection, then dead letters. Raises our errors."""
        counts = WriteCounts()
        pending = await self._still_needed(planned.writes, counts)
        counts.skipped = len(planned.writes) - len(pending)
        await self._apply(pending, counts)
        for _ in range(self._verify_rounds):
            if not pending:
                break
            # A concurrent update (the api's) that read the document before our write
            # and writes it back after would undo ours: read back once it has ended.
            await asyncio.sleep(mongo.settle_delay(counts.update_s / max(1, counts.ops)))
            pending = await self._still_needed(pending, counts)
            if not pending:
                break
            counts.rewritten += len(pending)
            await self._apply(pending, counts)
        letters = self.dead_letter_ops(planned.rejections)
        if letters:
            counts.dead_letters = len(letters)
            try:
                await _mapped(mongo.bulk_write(self._db[DEAD_LETTERS], letters, chunk=self._chunk))
            except StoreUnavailable:
                raise
            except StoreError:
                # Two instances filled the same ring slot at once; FerretDB reports the
                # upsert race as a duplicate key. The slot holds a sample either way, and
                # the rejection itself is counted, so the messages are still acked.
                counts.dead_letters_lost = len(letters)
        return counts

    async def _still_needed(self, items: Sequence[Accepted], counts: WriteCounts) -> list[Accepted]:
        """The items whose update would still change the stored documents.

        Before a write this skips replays and repeats. After a write (and
        :func:`~outpost.mongo.settle_delay`), on FerretDB, it finds the writes another
        client's concurrent update of the same document overwrote:
        FerretDB v1 rewrites whole documents without isolating concurrent updates, so a
        matched update can still be lost. Sending those again is safe (the same
        conditions apply) and converges, since each round only keeps what is still older.
        """
        if not items:
            return []
        started = time.monotonic()
        current = await self._current(items)
        counts.read_s += time.monotonic() - started
        return [item for item in items if needed(item, current.get(target(item)))]

    async def _apply(self, items: Sequence[Accepted], counts: WriteCounts) -> None:
        groups: dict[str, list[WriteOp]] = {}
        for item in items:
            collection, op = update_op(item)
            groups.setdefault(collection, []).append(op)
        started = time.monotonic()
        for collection, ops in groups.items():
            result = await _mapped(mongo.bulk_write(self._db[collection], ops, chunk=self._chunk))
            counts.ops += len(ops)
            counts.modified += result.modified
        counts.update_s += time.monotonic() - started

    async def _current(self, items: Sequence[Accepted]) -> dict[tuple[str, str], Document]:
        """One read per collection and batch: the stored keys (and state hash).

        On FerretDB every conditional update costs a collection scan, a read of the whole
        batch costs about one, so skipping replays and repeats this way is much cheaper
        than letting their updates match nothing.
        """
        wanted: dict[str, dict[str, set[str]]] = {}
        for item in items:
            collection, _id = target(item)
            wanted.setdefault(collection, {}).setdefault(_id, set()).add(stored_field(item))
        found: dict[tuple[str, str], Document] = {}
        for collection, by_id in wanted.items():
            fields = {f"{f}.{sub}": 1 for fs in by_id.values() for f in fs for sub in ("k", "h")}
            ids = sorted(by_id)
            for start in range(0, len(ids), 1000):
                cursor = self._db[collection].find(
                    {"_id": {"$in": ids[start : start + 1000]}}, projection=fields
                )
                for doc in await _mapped(cursor.to_list()):
                    found[(collection, str(doc["_id"]))] = doc
        return found

    async def ensure_devices(self, ids: Sequence[str]) -> int:
        """Create bare devices documents for ``ids`` that have none (resync only)."""
        known = await self.existing(ids)
        missing = [{"_id": i} for i in ids if i not in known]
        if missing:
            await _mapped(self._db[DEVICES].insert_many(missing, ordered=False))
        return len(missing)

    async def existing(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` have a devices document."""
        wanted, found = sorted(set(ids)), set[str]()
        for start in range(0, len(wanted), 500):
            cursor = self._db[DEVICES].find(
                {"_id": {"$in": wanted[start : start + 500]}}, projection={"_id": 1}
            )
            found.update(str(doc["_id"]) for doc in await _mapped(cursor.to_list()))
        return found

    async def ping(self) -> None:
        await _mapped(self._db.command("ping"))


class KnownDevices:
    """Device ids with a devices document: positives cached for good, negatives for a TTL.

    A device is registered by the api before it can connect (the broker's ACL needs its
    credentials), so an id seen once stays valid; an unknown id is asked again after
    ``unknown_ttl`` seconds, so a flood of messages for unknown ids costs one query per
    id and TTL, not one per message.
    """

    def __init__(
        self,
        lookup: Callable[[Iterable[str]], Awaitable[set[str]]],
        *,
        unknown_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = unknown_ttl
        self._clock = clock
        self._known: set[str] = set()
        self._unknown_until: dict[str, float] = {}

    def to_ask(self, ids: Iterable[str], now: float) -> set[str]:
        """Ids neither known nor remembered as unknown (pure)."""
        return {i for i in ids if i not in self._known and self._unknown_until.get(i, 0.0) <= now}

    async def known(self, ids: frozenset[str] | set[str]) -> set[str]:
        now = self._clock()
        ask = self.to_ask(ids, now)
        if ask:
            found = await self._lookup(ask)
            self._known |= found
            for i in ask - found:
                self._unknown_until[i] = now + self._ttl
            if len(self._unknown_until) > 100_000:
                self._unknown_until = {i: t for i, t in self._unknown_until.items() if t > now}
        return {i for i in ids if i in self._known}
