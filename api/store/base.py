"""Shared helpers: typed database alias, tenant-scoped pages, string ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from api.pagination import Sort, after_filter, next_cursor, sort_spec

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


def new_id() -> str:
    """Time-ordered string id (ObjectId hex)."""
    return str(ObjectId())


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Doc]
    next_cursor: str | None


async def page(
    collection: AsyncCollection[Doc],
    query: Doc,
    sort: Sort,
    limit: int,
    cursor: str | None,
    projection: Doc | None = None,
) -> Page:
    """One page of ``query`` in ``sort`` order, after ``cursor``."""
    after = after_filter(sort, cursor)
    full = {"$and": [query, after]} if after else query
    found = collection.find(full, projection).sort(sort_spec(sort)).limit(limit + 1)
    docs = await found.to_list(limit + 1)
    return Page(docs[:limit], next_cursor(docs, sort, limit))


def to_json_text(doc: Doc, fields: tuple[str, ...]) -> Doc:
    """Config objects are stored as JSON text: FerretDB refuses keys with '.' (the WiFi
    band keys are ``2.4GHz``) and no server takes admin-chosen keys starting with '$'."""
    return {
        k: json.dumps(v, separators=(",", ":")) if k in fields and isinstance(v, dict) else v
        for k, v in doc.items()
    }


def from_json_text(doc: Doc | None, fields: tuple[str, ...]) -> Doc | None:
    if doc is None:
        return None
    return {k: json.loads(v) if k in fields and isinstance(v, str) else v for k, v in doc.items()}
