"""MongoDB access shared by the services: the client, and bulk writes both servers take.

We run against MongoDB and against FerretDB v1 (SQLite). Two FerretDB v1.24.2 facts
shape this module (measured here, see README "MongoDB or FerretDB"):

- one ``update`` command holds a pooled SQLite connection per statement until the whole
  command ends, and the pool has 100 connections *shared by all clients*: updates in
  flight at once, across every service, beyond ~100 block forever. We therefore send
  bulks in chunks of :data:`FERRETDB_CHUNK` operations to FerretDB (MongoDB takes them
  whole), small enough that the bridge (its own chunk setting), the api and the scheduler
  together stay below the pool;
- every update scans the collection (its ``_id`` index is not used by updates), so write
  cost grows with collection size. Keep hot documents small;
- an update reads the document, changes it in FerretDB and writes the whole document
  back, with no isolation between the two: a concurrent update of the same document by
  another client (the bridge's presence, an admin's tags) silently undoes the one that
  committed in between (measured: 32 to 36 of 40 admin writes lost next to a client
  updating the same device's presence in a tight loop). Writers of shared documents
  therefore read their write back after :func:`settle_delay` and send it again if it
  was undone.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from pymongo.operations import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne

from outpost.settings import MongoSettings

FERRETDB_CHUNK = 16
MONGODB_CHUNK = 10_000

Document = dict[str, Any]
WriteOp = (
    InsertOne[Document] | UpdateOne | UpdateMany | ReplaceOne[Document] | DeleteOne | DeleteMany
)


def client(settings: MongoSettings, **kwargs: Any) -> AsyncMongoClient[Document]:
    return AsyncMongoClient(settings.url, tz_aware=True, **kwargs)


_FERRETDB: weakref.WeakKeyDictionary[AsyncMongoClient[Document], bool] = weakref.WeakKeyDictionary()


async def is_ferretdb(db: AsyncDatabase[Document]) -> bool:
    """Whether the server is FerretDB (asked once per client)."""
    known = _FERRETDB.get(db.client)
    if known is None:
        info = await db.client.admin.command("buildInfo")
        known = _FERRETDB[db.client] = "ferretdbVersion" in info
    return known


def settle_delay(statement_seconds: float) -> float:
    """How long to wait before reading back a write on FerretDB.

    A concurrent update that can undo ours is one statement that read the document
    before our write committed; statements on one collection take about as long as ours
    did, so twice that (plus a margin) is past the end of any such statement.
    """
    return min(5.0, 0.05 + 2 * statement_seconds)


@dataclass
class BulkCounts:
    inserted: int = 0
    matched: int = 0
    modified: int = 0
    upserted: int = 0
    deleted: int = 0


async def bulk_write(
    collection: AsyncCollection[Document], ops: Sequence[WriteOp], *, chunk: int
) -> BulkCounts:
    """Unordered bulk write in chunks of ``chunk`` operations, counts added up."""
    counts = BulkCounts()
    for start in range(0, len(ops), chunk):
        try:
            result = await collection.bulk_write(list(ops[start : start + chunk]), ordered=False)
        except KeyError as exc:
            # FerretDB answers a bulk with write errors (e.g. two clients upserting one
            # _id at once) without the counts pymongo expects, and pymongo then fails
            # with a KeyError instead of BulkWriteError. Give callers a pymongo error.
            raise OperationFailure(f"server reply without {exc} (write errors)") from exc
        counts.inserted += result.inserted_count
        counts.matched += result.matched_count
        counts.modified += result.modified_count
        counts.upserted += result.upserted_count
        counts.deleted += result.deleted_count
    return counts


async def chunk_size(db: AsyncDatabase[Document]) -> int:
    return FERRETDB_CHUNK if await is_ferretdb(db) else MONGODB_CHUNK
