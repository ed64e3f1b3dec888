"""Shared helpers: the database (a :class:`~outpost.store.Store`), pages, string ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from api.pagination import Sort, after_filter, next_cursor, sort_spec
from outpost.store import Store

Doc = dict[str, Any]
Db = Store


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
