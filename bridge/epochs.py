"""Broker epochs: when presence stored before now can no longer be vouched for.

A broker that is killed (SIGKILL, a crash, a node lost) sends no Last Will: its devices'
sessions vanish and ``device_presence`` keeps saying "online" until each device reconnects
and announces itself again (measured: 200 devices shown online for up to ~30 s). The
bridge is the only writer of presence, so it is the one that records such a moment, in
a document of its own (``broker_epochs``, :class:`schemas.documents.BrokerEpochDoc`);
readers then show "online" presence stored before the latest epoch as "unknown"
(:func:`schemas.documents.presence_status`).

Two signals, both cheap:

- ``$SYS/broker/uptime`` (Mosquitto; a plain subscription, refused harmlessly by brokers
  without it): a start later than the last one known, by more than ``tolerance_s``, is a
  new broker start. Only live messages count: the retained copy a new subscription gets
  may be ``sys_interval`` seconds old, which would place the start too late. The start is
  rounded *down* (uptime has a one-second resolution): presence received just before a
  start may pass as vouched, but presence received after it is never hidden.
- our own reconnect finding the session gone (CONNACK without ``session_present``): the
  broker lost its state, whichever broker it is. The epoch is the moment our previous
  connection was lost: the old broker was gone by then at the latest, and the new one
  cannot have sent anything before it (the reconnect itself may come seconds later, and
  presence the new broker delivered meanwhile must stay vouched for). The first connect
  of a process does not count (a new instance has no session by definition).

Each epoch is inserted once (``_id`` from its time to the millisecond, fixed width, so
the primary index sorts epochs; another instance inserting the same one is refused and
that is fine) and retried while MongoDB is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from bridge.errors import StoreError
from bridge.inbound import Inbound
from bridge.mongo_sink import MongoSink
from bridge.retry import RetryPolicy, retry
from schemas.documents import BrokerEpochDoc

__all__ = ["UPTIME_TOPIC", "Epoch", "EpochRecorder", "started_from_uptime"]

UPTIME_TOPIC = "$SYS/broker/uptime"
T = TypeVar("T")


@dataclass(frozen=True)
class Epoch:
    started_at: datetime
    source: str  # "uptime" or "session_lost"


def started_from_uptime(received_at: datetime, payload: bytes) -> datetime | None:
    """The broker's start from an uptime message (``"1234 seconds"``), rounded down."""
    text = payload.decode("ascii", "replace").strip().split(" ")[0]
    if not text.isdigit():
        return None
    start = received_at - timedelta(seconds=int(text) + 1)
    return start.replace(microsecond=0)


class EpochRecorder:
    """Sees broker starts and lost sessions; :meth:`run` writes them."""

    def __init__(
        self,
        sink: MongoSink,
        instance: str,
        logger: logging.Logger,
        *,
        session_expiry_s: float = 6 * 3600,
        tolerance_s: float = 3.0,
        policy: RetryPolicy | None = None,
    ) -> None:
        self._sink = sink
        self._instance = instance
        self._log = logger
        self._tolerance = timedelta(seconds=tolerance_s)
        self._session_expiry = timedelta(seconds=session_expiry_s)
        self._policy = policy or RetryPolicy()
        self._known: datetime | None = None
        self._pending: list[Epoch] = []
        self._wake = asyncio.Event()
        self._loaded = False

    def observe(self, inbound: Inbound) -> None:
        """A ``$SYS`` message from the bridge's subscription."""
        if inbound.topic != UPTIME_TOPIC or inbound.retain:
            return
        start = started_from_uptime(inbound.received_at, inbound.payload)
        if start is not None and self._is_new(start):
            self._add(Epoch(start, "uptime"))

    def connected(
        self, session_present: bool, generation: int, lost_at: datetime, now: datetime
    ) -> None:
        """Our (re)connect: a reconnect without our session means the broker lost it;
        ``lost_at`` is when our previous connection dropped. A session we were away from
        for longer than its expiry ended normally: that says nothing about the broker."""
        expired = now - lost_at >= self._session_expiry
        if generation > 1 and not session_present and not expired:
            stamp = lost_at.replace(microsecond=lost_at.microsecond // 1000 * 1000)
            self._add(Epoch(stamp, "session_lost"))

    def _is_new(self, start: datetime) -> bool:
        if not self._loaded:
            return False  # decided once the latest stored epoch is known (see run)
        return self._known is None or start - self._known > self._tolerance

    def _add(self, epoch: Epoch) -> None:
        if self._known is None or epoch.started_at > self._known:
            self._known = epoch.started_at
        self._pending.append(epoch)
        self._wake.set()

    async def run(self) -> None:
        """Learn the latest stored epoch, then write each new one (until cancelled)."""
        latest = await self._retry(self._sink.latest_epoch)
        if latest is not None and (self._known is None or latest > self._known):
            self._known = latest
        self._loaded = True
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending = self._pending, []
            for epoch in pending:
                await self._write(epoch)

    async def _write(self, epoch: Epoch) -> None:
        now = datetime.now(epoch.started_at.tzinfo)
        doc = BrokerEpochDoc(
            id=f"start:{epoch.started_at.isoformat(timespec='milliseconds')}",
            started_at=epoch.started_at,
            source="session_lost" if epoch.source == "session_lost" else "uptime",
            seen_by=self._instance,
            seen_at=now,
        )
        try:
            inserted = await self._retry(lambda: self._sink.record_epoch(doc))
        except StoreError as exc:  # refused (not transient: those are retried above)
            self._log.error(
                "broker epoch not recorded", extra={"epoch": doc.id, "error": str(exc)[:300]}
            )
            return
        self._log.warning(
            "broker epoch: presence stored before it is not vouched for",
            extra={
                "started_at": epoch.started_at.isoformat(),
                "source": epoch.source,
                "recorded": inserted,
            },
        )

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retry(call, self._policy, on_retry=self._on_retry, on_success=lambda: None)

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self._log.warning(
            "broker epoch not stored yet, retrying",
            extra={"attempt": attempt, "error": str(exc)[:200], "retry_in_s": round(delay, 2)},
        )
