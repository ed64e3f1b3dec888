"""Opaque cursors for every list: base64url of JSON ``[sort value, _id]``.

Pages are ordered by (sort field, ``_id``); the next page starts strictly after the
cursor's pair, so inserts and deletes between pages never repeat or skip a survivor.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.errors import InvalidInput

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


@dataclass(frozen=True, slots=True)
class Sort:
    field: str  # a document field; "_id" for id order
    descending: bool = False

    @classmethod
    def parse(cls, value: str, allowed: dict[str, str]) -> Sort:
        name = value.removeprefix("-")
        if name not in allowed:
            raise InvalidInput(
                f"sort: unknown field {name!r}; one of {sorted(allowed)}", loc=("query", "sort")
            )
        return cls(allowed[name], value.startswith("-"))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    return value


def _restore(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$dt"}:
        return datetime.fromisoformat(value["$dt"])
    return value


def encode_cursor(sort_value: Any, doc_id: Any) -> str:
    raw = json.dumps([_plain(sort_value), doc_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _plain_value(value: Any) -> bool:
    """What a cursor this api made can hold: no operator objects, no integers the database
    cannot store (a client-made cursor must not become a query or a 500)."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, dict) and set(value) == {"$dt"} and isinstance(value["$dt"], str)


def decode_cursor(cursor: str) -> tuple[Any, Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        sort_value, doc_id = value
        if not isinstance(doc_id, str) or not _plain_value(sort_value):
            raise TypeError("id")
        return _restore(sort_value), doc_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidInput(
            "cursor: not a cursor this api returned", loc=("query", "cursor")
        ) from None


def after_filter(sort: Sort, cursor: str | None) -> dict[str, Any]:
    """The query part that starts the page strictly after ``cursor``."""
    if cursor is None:
        return {}
    value, doc_id = decode_cursor(cursor)
    op = "$lt" if sort.descending else "$gt"
    if sort.field == "_id":
        return {"_id": {op: doc_id}}
    return {"$or": [{sort.field: {op: value}}, {sort.field: value, "_id": {op: doc_id}}]}


def sort_spec(sort: Sort) -> list[tuple[str, int]]:
    direction = -1 if sort.descending else 1
    if sort.field == "_id":
        return [("_id", direction)]
    return [(sort.field, direction), ("_id", direction)]


def next_cursor(docs: list[dict[str, Any]], sort: Sort, limit: int) -> str | None:
    """A cursor when the page is full (one extra document was fetched), else None."""
    if len(docs) <= limit:
        return None
    last = docs[limit - 1]
    return encode_cursor(_get(last, sort.field), last["_id"])


def _get(doc: dict[str, Any], dotted: str) -> Any:
    value: Any = doc
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
