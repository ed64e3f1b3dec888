"""devices (the api's registry), device_configs (bounded history), and what devices report.

The api writes ``devices`` and ``device_configs`` only; what a device reports
(``device_presence`` and ``device_status``, one document per channel) is the bridge's
and is joined here in code (:class:`DeviceView`), each read by ``_id``.
Every write of a ``devices`` document is a revision (:mod:`api.store.revisions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from api.pagination import Sort, after_filter, encode_cursor, sort_spec
from api.store.base import Db, Doc, Page, page
from api.store.revisions import Revision, revise
from outpost.store import Replace
from schemas.documents import (
    BROKER_EPOCHS,
    DEVICE_CONFIGS,
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    ConfigPointer,
    DeviceConfigDoc,
    DeviceDoc,
    DevicePresenceDoc,
    DeviceStatusDoc,
    PresenceStatus,
    device_config_id,
    device_last_seen,
    presence_status,
    to_json_text,
)

SORTS = {
    "id": "_id",
    "created_at": "created_at",
    "hardware_model": "hardware_model",
    "group": "group",
}
SCAN_MAX = 2000


@dataclass(frozen=True, slots=True)
class DeviceView:
    """A device as admins see it: the registry joined with what it reported (its
    reported state and its presence, two documents of the bridge)."""

    device: DeviceDoc
    status: DeviceStatusDoc | None
    reported_presence: DevicePresenceDoc | None = None
    epoch: datetime | None = None
    """The latest broker epoch (:class:`BrokerEpochDoc`): "online" stored before it is
    shown as "unknown" until the device's session is back."""

    @property
    def presence(self) -> PresenceStatus | None:
        return presence_status(self.reported_presence, self.epoch)

    @property
    def online(self) -> bool:
        return self.presence == "online"

    @property
    def firmware(self) -> str | None:
        state = self.status.state if self.status else None
        return state.firmware if state else None

    @property
    def last_seen(self) -> datetime | None:
        """The newest message of either channel."""
        return device_last_seen(self.reported_presence, self.status)


@dataclass(frozen=True, slots=True)
class DeviceFilter:
    online: bool | None = None
    group: str | None = None
    tag: str | None = None
    firmware: str | None = None
    hardware_model: str | None = None
    last_seen_before: datetime | None = None
    last_seen_after: datetime | None = None
    include_decommissioned: bool = False

    def query(self, tenant_id: str) -> Doc:
        """The part the registry answers."""
        q: Doc = {"tenant_id": tenant_id}
        if not self.include_decommissioned:
            q["decommissioned_at"] = None
        for field, value in (
            ("group", self.group),
            ("tags", self.tag),
            ("hardware_model", self.hardware_model),
        ):
            if value is not None:
                q[field] = value
        return q

    @property
    def on_status(self) -> bool:
        """Whether a part of the filter needs the reported status (joined in code)."""
        return any(
            v is not None
            for v in (self.online, self.firmware, self.last_seen_before, self.last_seen_after)
        )

    def keeps(self, view: DeviceView) -> bool:
        """The part the joined status answers."""
        seen = view.last_seen
        return (
            (self.online is None or view.online == self.online)
            and (self.firmware is None or view.firmware == self.firmware)
            and (
                self.last_seen_before is None or (seen is not None and seen < self.last_seen_before)
            )
            and (self.last_seen_after is None or (seen is not None and seen > self.last_seen_after))
        )


async def insert(db: Db, doc: DeviceDoc) -> None:
    await db[DEVICES].insert_one(doc.to_mongo())


async def delete(db: Db, device_id: str) -> None:
    await db[DEVICES].delete_one({"_id": device_id})


async def get(
    db: Db, tenant_id: str, device_id: str, *, live_only: bool = True
) -> DeviceDoc | None:
    q: Doc = {"_id": device_id, "tenant_id": tenant_id}
    if live_only:
        q["decommissioned_at"] = None
    raw = await db[DEVICES].find_one(q)
    return DeviceDoc.model_validate(raw) if raw else None


Reported = TypeVar("Reported", DeviceStatusDoc, DevicePresenceDoc)


async def _reported(
    db: Db, collection: str, model: type[Reported], ids: Sequence[str]
) -> dict[str, Reported]:
    """The bridge's documents of ``ids`` in ``collection`` (devices that never sent on
    that channel have none)."""
    found = [model.model_validate(raw) for raw in await db.find_ids(collection, ids)]
    return {doc.id: doc for doc in found}


async def statuses(db: Db, ids: Sequence[str]) -> dict[str, DeviceStatusDoc]:
    """The bridge's state documents of ``ids``."""
    return await _reported(db, DEVICE_STATUS, DeviceStatusDoc, ids)


async def presences(db: Db, ids: Sequence[str]) -> dict[str, DevicePresenceDoc]:
    """The bridge's presence documents of ``ids``."""
    return await _reported(db, DEVICE_PRESENCE, DevicePresenceDoc, ids)


async def latest_epoch(db: Db) -> datetime | None:
    """The latest broker start the bridge recorded: ``_id`` is ``start:<UTC ISO time>``,
    so the primary index gives it in order (one small read)."""
    found = await db[BROKER_EPOCHS].find_one({}, {"started_at": 1}, sort=[("_id", -1)])
    return found["started_at"] if found else None


async def view(db: Db, device: DeviceDoc) -> DeviceView:
    status = (await statuses(db, [device.id])).get(device.id)
    presence = (await presences(db, [device.id])).get(device.id)
    return DeviceView(device, status, presence, await latest_epoch(db))


async def find(
    db: Db,
    tenant_id: str,
    flt: DeviceFilter,
    sort: Sort,
    limit: int,
    cursor: str | None,
    keep: Callable[[DeviceView], bool] | None = None,
) -> tuple[list[DeviceView], str | None]:
    """A page of devices with their status; ``keep`` filters in code.

    Filters on the reported status (and ``keep``) are applied to the joined view, so a
    page may hold fewer than ``limit`` items (at most SCAN_MAX devices are examined per
    page); follow the cursor until it is null.
    """
    query = flt.query(tenant_id)
    after = after_filter(sort, cursor)
    full = {"$and": [query, after]} if after else query
    in_code = flt.on_status or keep is not None
    scan = SCAN_MAX if in_code else limit + 1
    raw = await db[DEVICES].find(full).sort(sort_spec(sort)).limit(scan).to_list()
    devices = [DeviceDoc.model_validate(d) for d in raw]
    ids = [d.id for d in devices]
    joined, present = await statuses(db, ids), await presences(db, ids)
    epoch = await latest_epoch(db)
    items: list[DeviceView] = []
    for device in devices:
        v = DeviceView(device, joined.get(device.id), present.get(device.id), epoch)
        if not flt.keeps(v) or (keep is not None and not keep(v)):
            continue
        if len(items) == limit:
            return items, _cursor(items[-1].device, sort)
        items.append(v)
    more = in_code and len(devices) == scan
    return items, (_cursor(devices[-1], sort) if more else None)


def _cursor(doc: DeviceDoc, sort: Sort) -> str:
    raw = doc.to_mongo()
    return encode_cursor(raw.get(sort.field) if sort.field != "_id" else None, doc.id)


async def in_group(db: Db, tenant_id: str, group: str) -> list[DeviceDoc]:
    query = {"tenant_id": tenant_id, "group": group, "decommissioned_at": None}
    return [DeviceDoc.model_validate(d) for d in await db[DEVICES].find(query).to_list()]


async def count_in_group(db: Db, tenant_id: str, group: str) -> int:
    query = {"tenant_id": tenant_id, "group": group, "decommissioned_at": None}
    return await db[DEVICES].count_documents(query)


def fields_update(fields: Doc) -> Doc:
    """A ``$set`` of registry fields, stored as :class:`DeviceDoc` stores them."""
    return {"$set": {k: to_json_text(v) if k == "overrides" else v for k, v in fields.items()}}


async def update_fields(db: Db, device: DeviceDoc, fields: Doc) -> bool:
    """Write registry fields as the next revision of ``device``; False if it moved."""
    return device.id in await revise(
        db, DEVICES, [Revision(device.id, device.rev, fields_update(fields))]
    )


# -- desired config ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigWrite:
    """Make ``version`` (``hash``, ``config``) desired on ``device``, plus registry ``extra``."""

    device: DeviceDoc
    version: int
    hash: str
    config: dict[str, Any]
    actor: str
    cause: str
    extra: Doc | None = None

    def history(self, now: datetime) -> DeviceConfigDoc:
        return DeviceConfigDoc(
            id=device_config_id(self.device.id, self.version),
            tenant_id=self.device.tenant_id,
            device_id=self.device.id,
            version=self.version,
            hash=self.hash,
            config=self.config,
            created_at=now,
            actor=self.actor,
            cause=self.cause,
        )

    def revision(self, now: datetime) -> Revision:
        pointer = ConfigPointer(version=self.version, hash=self.hash, updated_at=now)
        update = fields_update(self.extra or {})
        update["$set"]["desired_config"] = pointer.model_dump()
        return Revision(self.device.id, self.device.rev, update)


async def apply_configs(db: Db, writes: Sequence[ConfigWrite]) -> set[str]:
    """Store each history entry, then move the pointer, as one device revision each.

    Returns the device ids moved; the others lost a race (another request revised the
    device after it was read) and must be read and planned again.
    """
    now = datetime.now(UTC)
    by_id = {w.device.id: w for w in writes}

    async def history(held: list[Revision]) -> None:
        # Written by the revision holder only: an entry left by a holder that died before
        # moving the pointer is replaced, never duplicated.
        entries = [by_id[r.doc_id].history(now).to_mongo() for r in held]
        await db.apply(
            DEVICE_CONFIGS, [Replace({"_id": e["_id"]}, e, upsert=True) for e in entries]
        )

    return await revise(db, DEVICES, [w.revision(now) for w in writes], before_write=history)


async def trim_history(db: Db, device_id: str, newest: int, keep: int) -> None:
    oldest_kept = newest - keep + 1
    if oldest_kept > 1:
        await db[DEVICE_CONFIGS].delete_many(
            {"device_id": device_id, "version": {"$lt": oldest_kept}}
        )


async def get_config(
    db: Db, tenant_id: str, device_id: str, version: int
) -> DeviceConfigDoc | None:
    raw = await db[DEVICE_CONFIGS].find_one(
        {"_id": device_config_id(device_id, version), "tenant_id": tenant_id}
    )
    return DeviceConfigDoc.model_validate(raw) if raw else None


async def config_history(
    db: Db, tenant_id: str, device_id: str, limit: int, cursor: str | None
) -> tuple[list[DeviceConfigDoc], str | None]:
    query = {"tenant_id": tenant_id, "device_id": device_id}
    found: Page = await page(db[DEVICE_CONFIGS], query, Sort("_id", descending=True), limit, cursor)
    return [DeviceConfigDoc.model_validate(d) for d in found.items], found.next_cursor
