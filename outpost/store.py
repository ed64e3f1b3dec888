"""The one module that knows MongoDB from FerretDB: the client, and "apply these N writes".

Every service talks to MongoDB in production and to FerretDB v1.24.2 (on PostgreSQL)
locally. They differ in one way that matters to our code, measured here (bench/RESULTS.md):
how a batch of writes is best sent.

- **MongoDB**: one unordered ``bulk_write`` (chunks of :data:`MONGODB_CHUNK`) is the
  fast way.
- **FerretDB v1**: its bulks are slower than single statements (an unordered bulk of 16
  updates ran at 94/s where 16 concurrent ``update_one`` ran at 859/s) and a bulk of more
  than ~50 updates never returns, leaving the server unable to answer. So writes go out
  as single statements, ``OUTPOST_MONGO_WRITE_CONCURRENCY`` (16) at a time, and two writes of the
  same document never at the same time (FerretDB would lose one of them): writes that
  name the same ``_id`` run one after the other, in the order given; and across
  processes (two bridge instances given two messages of one device at once) a write of a
  document named by ``_id`` holds a lock on its *bucket* (a stable hash of the ``_id``
  into one of ``LOCK_BUCKETS`` per collection): a unique ``_id`` inserted into
  :data:`WRITE_LOCKS` for every bucket a round of writes touches, with one
  ``insert_many``, and deleted after their writes. A round is sized to last a third of
  the locks' TTL at the pace the last one wrote (:func:`lock_round`). Per-document locks cost
  ~20 % of the update rate (two statements' work per document: bench/store_locks.py);
  buckets cost two small statements per round. A lock whose
  holder died is taken over after ``LOCK_TTL_S``. Inserts are the
  exception: an unordered ``insert_many`` is ten times faster there than single ones
  (500 documents in 0.08 s against 0.8 s, measured here) and reports each refused
  document by its index, as MongoDB does; so a document that only inserts go to (no
  update of it in the same batch) is inserted that way.

:class:`Store` decides which once per connection: it asks the server (``buildInfo``) the
first time a batch is applied, and again after the client lost the server (a topology
event, or a connection error seen here), so a MongoDB that was unreachable at start is
never mistaken for FerretDB. Services never ask which server it is.

They also differ in how a set of documents is read by ``_id``: MongoDB answers
``{_id: {$in: [...]}}`` from its index, FerretDB v1 does not push ``$in`` down and scans
the collection (3.6 s for 1,000 ids among 20,000 documents, measured here), while one
``find_one`` by ``_id`` uses its ``_id`` index (1,000-1,200 a second, 16 at a time). So
:meth:`Store.find_ids` asks FerretDB one ``find_one`` per id, unless the ids are a tenth
of the collection or more: then it reads the whole collection once (20,000 documents in
2.0 s, where 20,000 ``find_one`` took ~18 s) and keeps the wanted ones.

Without the locks, two processes' updates of one document at the same instant lose one of
them (FerretDB reads the document, applies the update in its own process and writes the
whole document back): two clients' 50 ``$inc`` each on 4 documents kept 69-79 of 100
(``tests/integration/test_servers.py``), and two bridges given each of 300 devices'
``offline`` then ``online`` kept the older for 25-60 of them per round
(``tests/integration/bridge/test_channels_apart.py``).

What both servers do the same and our code relies on (see :mod:`schemas.documents`):
single-document writes, unique ``_id`` inserts as the only exclusive step. What FerretDB
does *not* do, and we therefore never rely on: isolation between two concurrent updates
of one document (one writer per document), change streams, ``$lookup``, TTL indexes,
transactions, ``$expr``.

Write errors come back per operation in :class:`Applied` (duplicate keys apart from the
rest), so a caller can tell "someone else inserted it first" and "this one write can never
succeed" from a server that is away: transient errors (``ConnectionFailure`` and its
subclasses, timeouts) are raised as pymongo raises them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, cast

import bson
from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteError,
    WTimeoutError,
)
from pymongo.monitoring import ServerDescriptionChangedEvent, ServerListener
from pymongo.operations import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateOne
from pymongo.server_type import SERVER_TYPE

from outpost.settings import MongoSettings

__all__ = [
    "DUPLICATE_KEY",
    "FERRETDB_CONCURRENCY",
    "MONGODB_CHUNK",
    "SCAN_FROM",
    "SCAN_SHARE",
    "TRANSIENT",
    "WRITE_LOCKS",
    "Applied",
    "Delete",
    "Document",
    "Insert",
    "Replace",
    "Server",
    "Store",
    "Update",
    "Write",
    "client",
    "lock_id",
    "lock_round",
    "scan_pays",
]

Document = dict[str, Any]
DUPLICATE_KEY = 11000
MONGODB_CHUNK = 10_000
IN_CHUNK = 1000  # ids per $in query on MongoDB
# FerretDB: ids read one by one below this many; from it on, by one read of the whole
# collection when they are at least 1/SCAN_SHARE of it (a find_one by _id ~1 ms, a
# document of a whole-collection read ~0.1 ms, collStats's count 0.1 s: measured here)
SCAN_FROM = 200
SCAN_SHARE = 10
INSERT_CHUNK = 100  # documents per insert_many on FerretDB
FERRETDB_CONCURRENCY = 16  # the default of OUTPOST_MONGO_WRITE_CONCURRENCY
# FerretDB only: one document per bucket of documents being written, by any process
WRITE_LOCKS = "write_locks"
LOCK_BUCKETS = 64  # locks per collection: two writers of one bucket take turns
LOCK_TTL_S = 15.0  # a lock older than this is taken over: its holder died or hangs
# A lock round takes as many documents as the last round of the collection wrote in
# LOCK_ROUND_S (a third of the TTL), within LOCK_ROUND_RANGE; LOCK_ROUND until then.
LOCK_ROUND = 2048
LOCK_ROUND_RANGE = (256, 16_384)
LOCK_ROUND_S = LOCK_TTL_S / 3
LOCK_RETRY_S = (0.005, 0.2)  # wait between tries for a busy bucket, doubling
_LOG = logging.getLogger("outpost.store")
# Values pymongo cannot encode (an int beyond 64 bits, a non-string key...): raised
# before anything is sent, for the whole bulk the write is in.
UNENCODABLE: tuple[type[Exception], ...] = (InvalidDocument, OverflowError)
# Errors after which the same write may succeed later. AutoReconnect, NetworkTimeout and
# ServerSelectionTimeoutError are ConnectionFailures.
TRANSIENT: tuple[type[PyMongoError], ...] = (ConnectionFailure, ExecutionTimeout, WTimeoutError)


class Server(StrEnum):
    MONGODB = "mongodb"
    FERRETDB = "ferretdb"


# -- writes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Insert:
    document: Document


@dataclass(frozen=True, slots=True)
class Update:
    filter: Document
    update: Document
    upsert: bool = False


@dataclass(frozen=True, slots=True)
class Replace:
    filter: Document
    document: Document
    upsert: bool = False


@dataclass(frozen=True, slots=True)
class Delete:
    filter: Document
    many: bool = False


Write = Insert | Update | Replace | Delete


@dataclass
class Applied:
    """What a batch did. Indexes refer to the batch as given to :meth:`Store.apply`."""

    inserted: int = 0
    matched: int = 0
    modified: int = 0
    upserted: int = 0
    deleted: int = 0
    duplicates: list[int] = field(default_factory=list)  # refused: the unique key exists
    errors: dict[int, str] = field(default_factory=dict)  # refused for any other reason

    def add(self, other: Applied, offset: int) -> None:
        self.inserted += other.inserted
        self.matched += other.matched
        self.modified += other.modified
        self.upserted += other.upserted
        self.deleted += other.deleted
        self.duplicates += [offset + i for i in other.duplicates]
        self.errors.update({offset + i: e for i, e in other.errors.items()})


def _pymongo_op(
    write: Write,
) -> InsertOne[Document] | UpdateOne | ReplaceOne[Document] | DeleteOne | DeleteMany:
    if isinstance(write, Insert):
        return InsertOne(write.document)
    if isinstance(write, Update):
        return UpdateOne(write.filter, write.update, upsert=write.upsert)
    if isinstance(write, Replace):
        return ReplaceOne(write.filter, write.document, upsert=write.upsert)
    return DeleteMany(write.filter) if write.many else DeleteOne(write.filter)


async def _one(collection: AsyncCollection[Document], write: Write) -> Applied:
    """One write as a single statement; its write error (if any) in the result."""
    try:
        if isinstance(write, Insert):
            await collection.insert_one(write.document)
            return Applied(inserted=1)
        if isinstance(write, Update):
            u = await collection.update_one(write.filter, write.update, upsert=write.upsert)
            return Applied(
                matched=u.matched_count,
                modified=u.modified_count,
                upserted=int(u.upserted_id is not None),
            )
        if isinstance(write, Replace):
            r = await collection.replace_one(write.filter, write.document, upsert=write.upsert)
            return Applied(
                matched=r.matched_count,
                modified=r.modified_count,
                upserted=int(r.upserted_id is not None),
            )
        if write.many:
            return Applied(deleted=(await collection.delete_many(write.filter)).deleted_count)
        return Applied(deleted=(await collection.delete_one(write.filter)).deleted_count)
    except DuplicateKeyError:
        return Applied(duplicates=[0])
    except TRANSIENT:
        raise
    except (WriteError, OperationFailure) as exc:
        if exc.has_error_label("RetryableWriteError"):
            raise
        return Applied(errors={0: _describe(exc)})
    except UNENCODABLE as exc:  # refused before it was sent: no server stores this value
        return Applied(errors={0: f"{type(exc).__name__}: {exc}"[:500]})


def _describe(exc: PyMongoError) -> str:
    code = getattr(exc, "code", None)
    return f"{code}: {exc}"[:500] if code is not None else str(exc)[:500]


def _from_bulk_error(exc: BulkWriteError) -> Applied:
    details = exc.details
    if details.get("writeConcernErrors"):
        raise exc  # the writes may have happened or not: the caller retries the batch
    result = Applied(
        inserted=int(details.get("nInserted", 0)),
        matched=int(details.get("nMatched", 0)),
        modified=int(details.get("nModified", 0)),
        upserted=int(details.get("nUpserted", 0)),
        deleted=int(details.get("nRemoved", 0)),
    )
    for error in details.get("writeErrors", []):
        if error.get("code") == DUPLICATE_KEY:
            result.duplicates.append(int(error["index"]))
        else:
            result.errors[int(error["index"])] = f"{error.get('code')}: {error.get('errmsg')}"[:500]
    return result


# -- the server's kind, asked again after a reconnect ------------------------------------


class _Kind(ServerListener):
    """Remembers the server kind until the client loses the server."""

    def __init__(self) -> None:
        self.known: Server | None = None

    def opened(self, event: Any) -> None:
        pass

    def closed(self, event: Any) -> None:
        self.known = None

    def description_changed(self, event: ServerDescriptionChangedEvent) -> None:
        if event.new_description.server_type == SERVER_TYPE.Unknown:
            self.known = None  # disconnected: whoever answers next is asked again


def client(settings: MongoSettings, **kwargs: Any) -> AsyncMongoClient[Document]:
    """A tz-aware client whose :class:`Store` re-asks the server kind after a reconnect.

    Every wait on the server is bounded (``OUTPOST_MONGO_TIMEOUT_S``, see
    :meth:`MongoSettings.client_timeouts`); ``kwargs`` override.
    """
    kind = _Kind()
    options: dict[str, Any] = {**settings.client_timeouts(), **kwargs}
    made: AsyncMongoClient[Document] = AsyncMongoClient(
        settings.url, tz_aware=True, event_listeners=[kind], **options
    )
    _KINDS[made] = kind
    return made


_KINDS: weakref.WeakKeyDictionary[AsyncMongoClient[Document], _Kind] = weakref.WeakKeyDictionary()


class Store:
    """A database plus the write strategy its server needs. Owns no client."""

    def __init__(self, db: AsyncDatabase[Document], *, concurrency: int = FERRETDB_CONCURRENCY):
        self.db = db
        self._kind = _KINDS.get(db.client) or _Kind()
        self._concurrency = concurrency
        self._lock_paces: dict[str, float] = {}  # collection -> documents/s of its last round

    def __getitem__(self, name: str) -> AsyncCollection[Document]:
        return self.db[name]

    async def server(self) -> Server:
        """Which server answers; asked once per connection."""
        if self._kind.known is None:
            try:
                info = await self.db.client.admin.command("buildInfo")
            except TRANSIENT:
                self._kind.known = None
                raise
            self._kind.known = Server.FERRETDB if "ferretdbVersion" in info else Server.MONGODB
        return self._kind.known

    async def apply(self, collection: str, writes: Sequence[Write]) -> Applied:
        """Apply ``writes`` to ``collection`` in no particular order, each at most once.

        Per-write refusals are in the result; a transient error is raised (some writes
        may have been applied: every write we send is idempotent or conditional).
        """
        if not writes:
            return Applied()
        try:
            if await self.server() is Server.MONGODB:
                return await self._bulk(self.db[collection], writes)
            return await self._concurrent(self.db[collection], writes)
        except TRANSIENT:
            self._kind.known = None
            raise

    async def find_ids(
        self,
        collection: str,
        ids: Sequence[Any],
        projection: Document | None = None,
    ) -> list[Document]:
        """The documents of ``collection`` whose ``_id`` is in ``ids`` (any order; missing
        ones are left out): ``$in`` in chunks on MongoDB, one indexed ``find_one`` per id,
        ``concurrency`` at a time, on FerretDB."""
        if not ids:
            return []
        coll = self.db[collection]
        try:
            if await self.server() is Server.MONGODB:
                found: list[Document] = []
                for start in range(0, len(ids), IN_CHUNK):
                    query = {"_id": {"$in": list(ids[start : start + IN_CHUNK])}}
                    found += await coll.find(query, projection).to_list()
                return found
            wanted = _hashable(ids)
            if wanted is not None and _keeps_id(projection) and len(wanted) >= SCAN_FROM:
                stats = await self.db.command("collStats", collection)
                if scan_pays(len(wanted), int(stats.get("count", 0))):
                    return [d async for d in coll.find({}, projection) if _among(d, wanted)]
            gate = asyncio.Semaphore(self._concurrency)

            async def one(_id: Any) -> Document | None:
                async with gate:
                    return await coll.find_one({"_id": _id}, projection)

            return [d for d in await asyncio.gather(*(one(i) for i in ids)) if d is not None]
        except TRANSIENT:
            self._kind.known = None
            raise

    async def each(self, collection: str, writes: Sequence[Write]) -> list[Applied]:
        """Apply ``writes`` as single statements (bounded concurrency, either server) and
        return each one's result: for the few callers that need per-write outcomes (which
        conditional update matched), which a bulk does not report."""
        try:
            locked = await self.server() is Server.FERRETDB
            return await self._singles(self.db[collection], writes, locked=locked)
        except TRANSIENT:
            self._kind.known = None
            raise

    async def _singles(
        self, coll: AsyncCollection[Document], writes: Sequence[Write], *, locked: bool = False
    ) -> list[Applied]:
        """Single statements, ``concurrency`` at a time; writes of one ``_id`` in order.

        ``locked`` (FerretDB): the writes of a document named by ``_id`` also hold its
        lock in :data:`WRITE_LOCKS`, so no other process writes it meanwhile.
        """
        results: list[Applied | None] = [None] * len(writes)

        async def worker(queue: Iterator[list[int]]) -> None:
            for indexes in queue:  # one chain (a document's writes, in order) at a time
                for index in indexes:
                    results[index] = await _one(coll, writes[index])

        async def run(chains: Sequence[list[int]]) -> None:
            # a few workers sharing one iterator, not a task per chain behind a semaphore:
            # thousands of tasks cost the event loop more than the writes' own sending
            queue = iter(chains)
            n = min(self._concurrency, len(chains))
            outcome = await asyncio.gather(
                *(worker(queue) for _ in range(n)), return_exceptions=True
            )
            for failed in outcome:
                if isinstance(failed, BaseException):
                    raise failed

        chains: dict[object, list[int]] = {}
        for index, write in enumerate(writes):
            chains.setdefault(_document_key(write, index), []).append(index)
        if not locked:
            await run(list(chains.values()))
        else:
            named = {k: c for k, c in chains.items() if not _unnamed(k)}
            await run([c for k, c in chains.items() if _unnamed(k)])
            await self._locks.each_locked(coll.name, named, run)
        return [r if r is not None else Applied() for r in results]

    @property
    def _locks(self) -> _Locks:
        return _Locks(self.db[WRITE_LOCKS], self._lock_paces)

    async def _bulk(self, coll: AsyncCollection[Document], writes: Sequence[Write]) -> Applied:
        total = Applied()
        for start in range(0, len(writes), MONGODB_CHUNK):
            chunk = writes[start : start + MONGODB_CHUNK]
            try:
                r = await coll.bulk_write([_pymongo_op(w) for w in chunk], ordered=False)
            except BulkWriteError as exc:
                total.add(_from_bulk_error(exc), start)
                continue
            except UNENCODABLE:
                # one write holds a value BSON cannot encode, and pymongo stopped the whole
                # bulk before sending it: send the chunk one by one to isolate that write
                for index, result in enumerate(await self._singles(coll, chunk)):
                    total.add(result, start + index)
                continue
            part = Applied(
                inserted=r.inserted_count,
                matched=r.matched_count,
                modified=r.modified_count,
                upserted=r.upserted_count,
                deleted=r.deleted_count,
            )
            total.add(part, start)
        return total

    async def _concurrent(
        self, coll: AsyncCollection[Document], writes: Sequence[Write]
    ) -> Applied:
        """FerretDB: the inserts of documents nothing else in the batch writes to as
        unordered ``insert_many``; every other write as a single statement."""
        inserts, singles = _insert_only(writes)
        total = Applied()
        if inserts:
            documents = [cast(Insert, writes[i]).document for i in inserts]
            total.add(_remapped(await _insert_many(coll, documents), inserts), 0)
        results = await self._singles(coll, [writes[i] for i in singles], locked=True)
        for index, result in zip(singles, results, strict=True):
            total.add(result, index)
        return total


_OWNER = secrets.token_hex(8)  # this process, as the holder of its locks


@dataclass(frozen=True)
class _Locks:
    """Write locks on FerretDB: per bucket of documents, a unique ``_id`` inserted, then
    deleted.

    A round takes up to :func:`lock_round` of the documents to write, locks the buckets
    they fall in with one unordered ``insert_many``, writes the documents of the buckets
    it got and unlocks them; the documents of buckets another process holds wait for a
    later round (with a doubling pause when a round got nothing). A lock's document
    names its holder and when it expires, so the holder deletes only its own and a lock
    left by a process that died is taken over (deleted if still that one) once expired.
    Nothing here waits on a lock while holding another, so two processes never wait on
    each other.
    """

    coll: AsyncCollection[Document]
    paces: dict[str, float] = field(default_factory=dict)  # per collection, documents/s

    async def each_locked(
        self,
        collection: str,
        chains: dict[object, list[int]],
        run: Callable[[Sequence[list[int]]], Awaitable[None]],
    ) -> None:
        waiting = list(chains)
        pause = LOCK_RETRY_S[0]
        while waiting:
            size = lock_round(self.paces.get(collection))
            keys, waiting = waiting[:size], waiting[size:]
            buckets: dict[str, list[object]] = {}
            for key in keys:
                buckets.setdefault(lock_id(collection, key), []).append(key)
            held = await self._lock(list(buckets))
            mine = [chains[k] for lock in held for k in buckets[lock]]
            began = time.monotonic()
            try:
                await run(mine)
            finally:
                await self._unlock(held)
            took = time.monotonic() - began
            if len(mine) >= LOCK_ROUND_RANGE[0] and took > 0:  # enough to tell the pace
                self.paces[collection] = len(mine) / took
            busy = [lock for lock in buckets if lock not in held]
            waiting += [k for lock in busy for k in buckets[lock]]
            if held:
                pause = LOCK_RETRY_S[0]
            elif busy:  # all taken by others: wait for them, or for an expiry
                await asyncio.sleep(pause)
                pause = min(2 * pause, LOCK_RETRY_S[1])
                await self._take_over_expired(busy)

    async def _lock(self, ids: list[str]) -> list[str]:
        expires = datetime.now(UTC) + timedelta(seconds=LOCK_TTL_S)
        documents = [{"_id": i, "holder": _OWNER, "expires_at": expires} for i in ids]
        applied = await _insert_many(self.coll, documents)
        if applied.errors:  # refused, not held by another: write unlocked rather than never
            _LOG.warning("write lock refused", extra={"error": next(iter(applied.errors.values()))})
        busy = set(applied.duplicates)
        return [i for n, i in enumerate(ids) if n not in busy]

    async def _unlock(self, ids: list[str]) -> None:
        if ids:  # ours only: an expired one taken over by another is theirs now
            await self.coll.delete_many({"_id": {"$in": ids}, "holder": _OWNER})

    async def _take_over_expired(self, ids: list[str]) -> None:
        now = datetime.now(UTC)
        stale = await self.coll.find({"_id": {"$in": ids}, "expires_at": {"$lt": now}}).to_list()
        for lock in stale:
            still = {"_id": lock["_id"], "expires_at": lock["expires_at"]}
            gone = await self.coll.delete_one(still)
            if gone.deleted_count:
                _LOG.warning(
                    "write lock taken over",
                    extra={"lock": lock["_id"], "holder": lock.get("holder")},
                )


def lock_round(pace: float | None) -> int:
    """Documents in the next lock round of a collection whose last round wrote ``pace``
    documents a second: as many as that pace writes in ``LOCK_ROUND_S``, so a round ends
    well before its locks could be taken over (``LOCK_TTL_S``) even if the database
    slows down threefold, and a fast database is not stopped every 2,048 documents for
    the two lock statements and the drain of a round (the bridge's 16,000-document
    batches on FerretDB: 0.92-0.97 of the raw update rate in rounds of 2,048, 0.93-1.0
    in rounds of 8,192, bench/RESULTS.md)."""
    if pace is None:
        return LOCK_ROUND
    low, high = LOCK_ROUND_RANGE
    return max(low, min(high, int(pace * LOCK_ROUND_S)))


def scan_pays(ids: int, documents: int) -> bool:
    """FerretDB: whether ``ids`` documents out of ``documents`` are read faster by one
    read of the whole collection than by one ``find_one`` each."""
    return ids >= SCAN_FROM and ids * SCAN_SHARE >= documents


def _hashable(ids: Sequence[Any]) -> set[Any] | None:
    try:
        return set(ids)
    except TypeError:  # a document as an _id: only a query by it finds it
        return None


def _among(document: Document, ids: set[Any]) -> bool:
    try:
        return document["_id"] in ids
    except TypeError:  # a document as an _id is never among hashable ids
        return False


def _keeps_id(projection: Document | None) -> bool:
    return projection is None or projection.get("_id", 1) not in (0, False)


def lock_id(collection: str, key: object) -> str:
    """The write lock of the document ``key`` of ``collection``: its bucket's, the same
    in every process (a CRC of the key, not Python's salted ``hash``)."""
    bucket = zlib.crc32(f"{type(key).__name__}:{key}".encode()) % LOCK_BUCKETS
    return f"{collection}:{bucket}"


@dataclass(frozen=True, slots=True)
class _Unnamed:
    """The key of a write whose filter names no single ``_id``: its own, by its index."""

    index: int


def _unnamed(key: object) -> bool:
    return isinstance(key, _Unnamed)


def _insert_only(writes: Sequence[Write]) -> tuple[list[int], list[int]]:
    """The indexes of the inserts whose document no other kind of write in ``writes``
    names (in order), and the indexes of everything else."""
    mixed = {_document_key(w, i) for i, w in enumerate(writes) if not isinstance(w, Insert)}
    inserts: list[int] = []
    rest: list[int] = []
    for index, write in enumerate(writes):
        only = isinstance(write, Insert) and _document_key(write, index) not in mixed
        (inserts if only else rest).append(index)
    return inserts, rest


def _remapped(applied: Applied, indexes: Sequence[int]) -> Applied:
    """``applied`` of a sub-batch, its write indexes turned back into ``indexes``'."""
    applied.duplicates = [indexes[i] for i in applied.duplicates]
    applied.errors = {indexes[i]: e for i, e in applied.errors.items()}
    return applied


async def _insert_many(coll: AsyncCollection[Document], documents: list[Document]) -> Applied:
    """Unordered ``insert_many`` in chunks, with the outcome of each document, as
    :func:`_one` gives it. A document BSON cannot encode is refused here, before anything
    is sent (pymongo would stop its whole chunk, maybe after sending a part of it)."""
    total = Applied()
    sendable: list[int] = []
    for index, document in enumerate(documents):
        try:
            bson.encode(document, codec_options=coll.codec_options)
        except UNENCODABLE as exc:
            total.errors[index] = f"{type(exc).__name__}: {exc}"[:500]
        else:
            sendable.append(index)
    for start in range(0, len(sendable), INSERT_CHUNK):
        chunk = sendable[start : start + INSERT_CHUNK]
        try:
            r = await coll.insert_many([documents[i] for i in chunk], ordered=False)
        except BulkWriteError as exc:
            total.add(_remapped(_from_bulk_error(exc), chunk), 0)
        except OperationFailure as exc:
            if exc.has_error_label("RetryableWriteError"):
                raise
            # refused as a whole (not per document): each one alone says which and why
            for index in chunk:
                total.add(await _one(coll, Insert(documents[index])), index)
        else:
            total.inserted += len(r.inserted_ids)
    return total


def _document_key(write: Write, index: int) -> object:
    """The document a write targets, when its ``_id`` is plain; else its own index."""
    _id = write.document.get("_id") if isinstance(write, Insert) else write.filter.get("_id")
    if _id is None or isinstance(_id, dict | list):
        return _Unnamed(index)  # no single document named: nothing to serialize against
    return _id
