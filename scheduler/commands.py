"""Group device commands: each bulk's commands sent at its per-minute cap, by one instance.

The api writes a bulk (``command_bulks``) and one ``commands`` document per device; this
module publishes them. Per active bulk (not expired, not marked done), each tick, under
the bulk's lease (:mod:`scheduler.claims`):

1. read its commands and its send claims (``command_sends``, this module's own);
2. :func:`schemas.waves.paced_budget`: how many may go now (never more than the cap in
   any 60 seconds, spread evenly over the minute);
3. for each command due: **claim** (insert ``{_id: <command id>}``: one instance, once),
   check the lease, **publish** (QoS 1, until PUBACK: an MQTT v5 request with Response
   Topic, Correlation Data and a Message Expiry Interval ending at the command's
   deadline), **confirm** (``published_at`` on the claim);
4. a claim left unconfirmed for ``settle`` (its sender died between claim and confirm)
   is published again by whoever holds the lease then, once per fencing token (claim
   ``<command id>#r<token>``), unless the device already answered. The device runs a
   command id once (``device.commands.Handled``) and the bridge keeps the first result,
   so a copy that did arrive twice changes nothing: no command is missed, none runs twice;
5. once every command has a confirmed claim, the bulk is marked done (a unique
   ``scheduler_claims`` insert) and no longer read.

Devices that are offline get theirs when they come back (their persistent session holds
it) unless it expired first; the broker drops it then.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from pymongo.errors import PyMongoError

from outpost.store import Insert, Store, Update
from scheduler.claims import Claims, LeaseState, firing_id
from scheduler.clock import Clock, aware
from scheduler.errors import LeaseLost, PublishError, StoreError
from scheduler.metrics import SchedulerMetrics
from scheduler.publisher import CommandSink, Outgoing, Presigner
from schemas import commands as c
from schemas.documents import (
    COMMAND_BULKS,
    COMMAND_RESULTS,
    COMMAND_SENDS,
    COMMANDS,
    SCHEDULER_CLAIMS,
    CommandBulkDoc,
    CommandDoc,
    CommandSendDoc,
)
from schemas.protocol import encode
from schemas.topics import Channel, topic
from schemas.waves import paced_budget

__all__ = ["CommandConfig", "CommandSender", "outgoing"]

DONE = "command_bulk_done"
LOOKAHEAD = timedelta(seconds=1)  # a tick takes the sends whose slot comes within this
MAX_BULK = 100_000


@dataclass(frozen=True)
class CommandConfig:
    lease_ttl: timedelta = timedelta(seconds=30)
    lease_margin: timedelta = timedelta(seconds=5)
    batch: int = 64
    settle: timedelta = timedelta(seconds=15)


def outgoing(doc: CommandDoc, now: datetime, upload_url: str | None) -> Outgoing | None:
    """The MQTT request for ``doc`` published at ``now``; None once it expired."""
    expiry = c.expiry_interval(aware(doc.expires_at), now)
    if expiry is None:
        return None
    request = c.request(doc.id, doc.name, doc.args, now, aware(doc.expires_at), upload_url)
    return Outgoing(
        topic(Channel.COMMAND, doc.device_id, doc.id),
        encode(request),
        expiry_s=expiry,
        response_topic=topic(Channel.COMMAND_RESULT, doc.device_id, doc.id),
        correlation=doc.id.encode(),
    )


class CommandSender:
    def __init__(
        self,
        db: Store,
        claims: Claims,
        sink: CommandSink,
        presigner: Presigner,
        metrics: SchedulerMetrics,
        clock: Clock,
        logger: logging.Logger,
        config: CommandConfig,
    ) -> None:
        self._db = db
        self._claims = claims
        self._sink = sink
        self._presigner = presigner
        self._metrics = metrics
        self._clock = clock
        self._log = logger
        self._config = config
        self._leases: dict[str, LeaseState] = {}
        self._last_sent: dict[str, datetime] = {}  # per bulk, this instance's last publish

    async def ensure_indexes(self) -> None:
        """What the reads of each tick need (idempotent; created at start)."""
        try:
            await self._db[COMMAND_SENDS].create_index([("bulk_id", 1)])
            await self._db[COMMAND_BULKS].create_index([("expires_at", 1)])
        except PyMongoError as exc:
            raise StoreError(f"command indexes: {exc}") from exc

    async def tick(self) -> None:
        """Move every active bulk on; raises :class:`StoreError` when MongoDB is away."""
        try:
            bulks = await self._active(self._clock())
        except PyMongoError as exc:
            raise StoreError(f"command bulks: {exc}") from exc
        for bulk in bulks:
            try:
                await self._bulk(bulk)
            except (LeaseLost, PublishError) as exc:
                self._leases.pop(bulk.id, None)
                self._log.warning("command bulk paused", extra={"bulk": bulk.id, "error": str(exc)})
            except PyMongoError as exc:
                raise StoreError(f"command bulk {bulk.id}: {exc}") from exc
        for gone in set(self._leases) - {b.id for b in bulks}:
            self._leases.pop(gone, None)
        for gone in set(self._last_sent) - {b.id for b in bulks}:
            self._last_sent.pop(gone, None)

    async def release_all(self) -> None:
        for lease in list(self._leases.values()):
            await self._claims.release(lease)
        self._leases.clear()

    async def _active(self, now: datetime) -> list[CommandBulkDoc]:
        found = self._db[COMMAND_BULKS].find({"expires_at": {"$gt": now}})
        bulks = [CommandBulkDoc.model_validate(d) for d in await found.to_list(1000)]
        done_ids = [firing_id(f"{DONE}:{b.id}", aware(b.created_at)) for b in bulks]
        done = {d["_id"] for d in await self._db.find_ids(SCHEDULER_CLAIMS, done_ids, {"_id": 1})}
        return [b for b, i in zip(bulks, done_ids, strict=True) if i not in done]

    async def _bulk(self, bulk: CommandBulkDoc) -> None:
        cfg = self._config
        lease = await self._claims.hold(
            f"commands:{bulk.id}", cfg.lease_ttl, self._leases.get(bulk.id)
        )
        if lease is None:
            self._leases.pop(bulk.id, None)
            return
        self._leases[bulk.id] = lease
        commands = await self._commands(bulk.id)
        sends = await self._sends(bulk.id)
        now = self._clock()
        unsent = [d for d in commands if d.id not in sends and aware(d.expires_at) > now]
        first_sends = sorted(aware(s.claimed_at) for s in sends.values() if "#" not in s.id)
        budget = paced_budget(bulk.max_per_minute, first_sends, now + LOOKAHEAD)
        due = unsent[: min(budget, cfg.batch)]
        spacing = timedelta(seconds=60 / bulk.max_per_minute)
        base = first_sends[0] if first_sends else now
        slots = [base + (len(first_sends) + i) * spacing for i in range(len(due))]
        await self._send(lease, due, bulk, first=True, slots=slots)
        await self._resend(lease, commands, sends, bulk, now)
        confirmed = {s.command_id for s in sends.values() if s.published_at is not None}
        if not unsent and all(d.id in confirmed for d in commands if aware(d.expires_at) > now):
            await self._claims.claim_firing(f"{DONE}:{bulk.id}", aware(bulk.created_at))
            await self._claims.release(lease)
            self._leases.pop(bulk.id, None)
            self._log.info("command bulk sent", extra={"bulk": bulk.id, "commands": len(commands)})

    async def _commands(self, bulk_id: str) -> list[CommandDoc]:
        found = self._db[COMMANDS].find({"bulk_id": bulk_id}).sort("_id", 1)
        return [CommandDoc.model_validate(d) for d in await found.to_list(MAX_BULK)]

    async def _sends(self, bulk_id: str) -> dict[str, CommandSendDoc]:
        found = self._db[COMMAND_SENDS].find({"bulk_id": bulk_id})
        docs = [CommandSendDoc.model_validate(d) for d in await found.to_list(2 * MAX_BULK)]
        return {d.id: d for d in docs}

    async def _claim(self, lease: LeaseState, docs: list[CommandDoc], first: bool) -> list[str]:
        """Insert one claim per command (all at once); the ids this instance won."""
        now = self._clock()
        sends = [
            CommandSendDoc(
                id=doc.id if first else f"{doc.id}#r{lease.token}",
                command_id=doc.id,
                bulk_id=doc.bulk_id or "",
                token=lease.token,
                holder=self._claims.holder,
                claimed_at=now,
            )
            for doc in docs
        ]
        applied = await self._db.apply(COMMAND_SENDS, [Insert(s.to_mongo()) for s in sends])
        if applied.errors:
            raise StoreError(f"command claims refused: {list(applied.errors.values())[:1]}")
        lost = set(applied.duplicates)  # another instance (or an earlier tick) has them
        return [s.id for i, s in enumerate(sends) if i not in lost]

    async def _send(
        self,
        lease: LeaseState,
        docs: list[CommandDoc],
        bulk: CommandBulkDoc,
        *,
        first: bool,
        slots: list[datetime] | None = None,
    ) -> None:
        """Claim, then publish and confirm ``docs`` (first sends, or re-sends); each first
        send no earlier than its slot (one every ``60 / max_per_minute`` seconds from the
        bulk's first send), so the sends go out evenly, not in bursts."""
        if not docs:
            return
        won = set(await self._claim(lease, docs, first))
        ready: list[tuple[str, Outgoing, datetime | None]] = []
        for n, doc in enumerate(docs):
            claim_id = doc.id if first else f"{doc.id}#r{lease.token}"
            message = outgoing(doc, self._clock(), self._upload_url(doc))
            if claim_id in won and message is not None:
                ready.append((claim_id, message, slots[n] if slots else None))
        publishing: list[asyncio.Task[None]] = []
        spacing = timedelta(seconds=60 / bulk.max_per_minute)
        try:
            for _, message, slot in ready:
                if slot is not None:  # pace (a timer, not a synchronisation): the slot, and
                    # never closer than the spacing to the last send (no catch-up bursts)
                    last = self._last_sent.get(bulk.id)
                    at = slot if last is None else max(slot, last + spacing)
                    await asyncio.sleep(max(0.0, (at - self._clock()).total_seconds()))
                    self._last_sent[bulk.id] = self._clock()
                self._claims.check(lease, self._config.lease_margin)
                publishing.append(
                    asyncio.create_task(self._sink.publish_all([message]), name="command publish")
                )
        finally:
            outcomes = await asyncio.gather(*publishing, return_exceptions=True)
            published = [
                claim_id
                for (claim_id, _, _), outcome in zip(ready, outcomes, strict=False)
                if not isinstance(outcome, BaseException)
            ]
            if published:
                at = self._clock()
                updates = [Update({"_id": i}, {"$set": {"published_at": at}}) for i in published]
                await self._db.apply(COMMAND_SENDS, updates)
                self._metrics.device_commands.labels(
                    command=c.label(bulk.name), kind="first" if first else "resend"
                ).inc(len(published))
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise PublishError(f"{len(failed)} command publishes failed: {failed[0]}")

    def _upload_url(self, doc: CommandDoc) -> str | None:
        """A ``logs`` command's presigned PUT, valid until the command expires."""
        if doc.logs_key is None:
            return None
        seconds = c.expiry_interval(aware(doc.expires_at), self._clock()) or 1
        return self._presigner.get_url(doc.logs_key, seconds, method="put_object")

    async def _resend(
        self,
        lease: LeaseState,
        commands: list[CommandDoc],
        sends: dict[str, CommandSendDoc],
        bulk: CommandBulkDoc,
        now: datetime,
    ) -> None:
        """Publish again what a dead sender claimed and never confirmed (see module)."""
        stale = [
            s
            for s in sends.values()
            if "#" not in s.id
            and s.published_at is None
            and now - aware(s.claimed_at) >= self._config.settle
            and f"{s.id}#r{lease.token}" not in sends
        ]
        if not stale:
            return
        answered = {
            d["_id"]
            for d in await self._db.find_ids(COMMAND_RESULTS, [s.id for s in stale], {"_id": 1})
        }
        by_id = {d.id: d for d in commands}
        again = [by_id[s.id] for s in stale if s.id not in answered and s.id in by_id]
        await self._send(lease, again[: self._config.batch], bulk, first=False)
