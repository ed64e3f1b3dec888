"""Config reconcile: re-publish the retained desired config where the device lags.

Decision (pure, :func:`decide`), per device with a desired config:

- in sync (applied version = desired version) → nothing;
- the device rejected that version → nothing (re-sending cannot help; the api shows it);
- attempts for this version reached ``max_attempts`` → nothing (counted as given up);
- it came back online since our last attempt (or since the config changed) → now;
- it lags longer than ``lag`` and the last attempt is older than
  ``retry_after * 2**attempts`` → now.

After the broker lost its retained messages (restarted without them, detected from
``$SYS/broker/uptime`` going down), :meth:`Reconciler.run` with ``resync=True``
re-publishes every desired config, in sync or not: the retained copy is what a device
reads on its next connect.

Inputs are joined in code: the desired pointer from the api's ``devices``, the reported
config from the bridge's ``device_status`` and presence from its ``device_presence``.
Attempts are recorded in ``scheduler_reconcile`` (``_id`` = device id), a collection only
the scheduler writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from pymongo.errors import PyMongoError

from outpost.store import Document, Replace, Store
from scheduler.clock import aware
from scheduler.errors import StoreError
from scheduler.publisher import CommandSink, Outgoing
from schemas.documents import (
    DEVICE_CONFIGS,
    DEVICE_PRESENCE,
    DEVICE_STATUS,
    DEVICES,
    SCHEDULER_RECONCILE,
    DeviceConfigDoc,
    device_config_id,
)
from schemas.protocol import ConfigMessage, encode
from schemas.topics import Channel, topic

__all__ = ["RECONCILE", "ReconcilePolicy", "Reconciler", "decide"]

RECONCILE = SCHEDULER_RECONCILE


@dataclass(frozen=True)
class ReconcilePolicy:
    lag: timedelta = timedelta(minutes=5)
    retry_after: timedelta = timedelta(minutes=5)
    max_attempts: int = 5
    per_run: int = 500


def _when(value: Any) -> datetime | None:
    return aware(value) if isinstance(value, datetime) else None


def decide(
    device: Document, record: Document | None, policy: ReconcilePolicy, now: datetime
) -> str | None:
    """Why to re-publish this device's config now, or None."""
    desired = device.get("desired_config") or {}
    version = desired.get("version")
    if not version:
        return None
    applied = (device.get("state") or {}).get("config") or {}
    if applied.get("version") == version:  # applied, or rejected: re-sending cannot help
        return None
    rec = record if record and record.get("version") == version else {}
    attempts = int(rec.get("attempts", 0))
    if attempts >= policy.max_attempts:
        return None
    last = _when(rec.get("last_at"))
    changed = _when(desired.get("updated_at")) or now
    presence = device.get("presence") or {}
    since = _when(presence.get("since"))
    if presence.get("status") == "online" and since and since > (last or changed):
        return "reconnected"
    if now - changed < policy.lag:
        return None
    if last is None or now - last >= policy.retry_after * 2 ** min(attempts, 10):
        return "lagging"
    return None


class Reconciler:
    def __init__(
        self,
        db: Store,
        sink: CommandSink,
        logger: logging.Logger,
        policy: ReconcilePolicy | None = None,
    ) -> None:
        self.db = db
        self.sink = sink
        self.log = logger
        self.policy = policy or ReconcilePolicy()

    async def run(self, now: datetime, *, resync: bool = False) -> int:
        """One pass; returns how many configs were re-published."""
        try:
            picked = await self._pick(now, resync)
            messages, records = await self._build(picked, now, resync)
            if messages:
                await self.sink.publish_all(messages)
            if records:
                await self.db.apply(RECONCILE, records)
        except PyMongoError as exc:
            raise StoreError(f"reconcile: {exc}") from exc
        if messages:
            self.log.info("configs re-published", extra={"count": len(messages), "resync": resync})
        return len(messages)

    async def _pick(self, now: datetime, resync: bool) -> list[tuple[Document, str]]:
        devices = (
            await self.db[DEVICES]
            .find(
                {"desired_config.version": {"$gt": 0}, "decommissioned_at": None},
                {"desired_config": 1},
            )
            .to_list(None)
        )
        # whole-collection reads: every device with a desired config is looked at anyway
        reported = {s["_id"]: s async for s in self.db[DEVICE_STATUS].find({}, {"state.config": 1})}
        present = {p["_id"]: p async for p in self.db[DEVICE_PRESENCE].find({}, {"presence": 1})}
        records = {r["_id"]: r async for r in self.db[RECONCILE].find({})}
        picked = []
        for device in devices:
            i = device["_id"]
            view = {**reported.get(i, {}), **present.get(i, {}), **device}  # joined in code
            reason = (
                "broker resync"
                if resync
                else decide(view, records.get(device["_id"]), self.policy, now)
            )
            if reason:
                picked.append((view, reason))
        return picked[: self.policy.per_run] if not resync else picked

    async def _build(
        self, picked: list[tuple[Document, str]], now: datetime, resync: bool
    ) -> tuple[list[Outgoing], list[Replace]]:
        messages: list[Outgoing] = []
        records: list[Replace] = []
        old = {
            r["_id"]: r for r in await self.db.find_ids(RECONCILE, [d["_id"] for d, _ in picked])
        }
        for device, reason in picked:
            desired = device["desired_config"]
            raw = await self.db[DEVICE_CONFIGS].find_one(
                {"_id": device_config_id(device["_id"], desired["version"])}
            )
            if raw is None:
                self.log.warning(
                    "desired config missing from history", extra={"device_id": device["_id"]}
                )
                continue
            try:
                entry = DeviceConfigDoc.model_validate(raw)
                message = ConfigMessage.model_validate(
                    {
                        "version": entry.version,
                        "hash": entry.hash,
                        "issued_at": aware(entry.created_at),
                        "config": entry.config,
                    }
                )
            except (ValidationError, ValueError) as exc:
                self.log.error(
                    "stored config cannot be published",
                    extra={"device_id": device["_id"], "error": str(exc)[:300]},
                )
                continue
            messages.append(
                Outgoing(topic(Channel.CONFIG, device["_id"]), encode(message), retain=True)
            )
            prev = old.get(device["_id"]) or {}
            same = prev.get("version") == desired["version"]
            attempts = (int(prev.get("attempts", 0)) if same else 0) + (0 if resync else 1)
            records.append(
                Replace(
                    {"_id": device["_id"]},
                    {
                        "_id": device["_id"],
                        "version": desired["version"],
                        "attempts": attempts,
                        "last_at": now,
                        "reason": reason,
                    },
                    upsert=True,
                )
            )
        return messages, records
