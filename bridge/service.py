"""The bridge loop: decode on arrival, collect a batch, decide, write, then acknowledge.

    MQTT source (paho in a child process, or on this loop) ──► queue
        ──► decode + reject (pure), as messages arrive, while the previous batch is
            being written
        ──► collect (≤ batch_max or flush_ms) ──► known device / execution check
        ──► coalesce (pure)
        ──► inserts and conditional updates of the bridge's own documents, dead letters
            (retried while MongoDB is away)
        ──► ack every message of the batch, in the order received

Nothing is acknowledged before the write that contains it succeeded, so a crash at any
point loses nothing: the broker redelivers, and the conditional updates make a replay
harmless. Rejected messages are acknowledged after their dead-letter sample is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Literal, TypeVar

from bridge.batch import Plan, Skip, plan, with_known
from bridge.command_results import is_result
from bridge.decode import Accepted, Rejection, decode
from bridge.inbound import Inbound, Source
from bridge.metrics import BridgeMetrics
from bridge.mongo_sink import KnownIds, MongoSink, WriteCounts
from bridge.results_sink import ResultCounts, ResultsSink
from bridge.retry import RetryPolicy, retry
from schemas.protocol import JobStatusMessage, RejectReason, StateMessage

__all__ = ["Bridge", "Writer"]

DECODE_SLICE = 32  # messages decoded between two turns of the event loop

T = TypeVar("T")


@dataclass
class Writer:
    """Decode, check, coalesce and write one batch (shared by the bridge and resync)."""

    sink: MongoSink
    devices: KnownIds
    executions: KnownIds
    metrics: BridgeMetrics
    logger: logging.Logger
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    results: ResultsSink | None = None
    store_ok: bool = True

    async def write(self, batch: Sequence[Accepted | Rejection]) -> WriteCounts:
        """Check, coalesce and write a decoded batch (:func:`bridge.decode.decode`).

        Command results go first, to their own documents (:mod:`bridge.results_sink`);
        the ones refused there join the batch's rejections (dead letters, counted)."""
        began = time.monotonic()
        results = [i for i in batch if isinstance(i, Accepted) and is_result(i)]
        if results:
            rest: list[Accepted | Rejection] = [i for i in batch if not is_result(i)]
            answered = await self._store_results(results)
            batch = [*rest, *answered.rejections]
        decoded = plan(batch)
        devices = await self._retry(lambda: self.devices.known(decoded.device_ids))
        runs = await self._retry(lambda: self.executions.known(decoded.execution_ids))
        planned = with_known(decoded, devices, runs)
        started = time.monotonic()
        now = datetime.now(UTC)
        counts = await self._retry(lambda: self.sink.write(planned, now))
        ended = time.monotonic()
        self.metrics.write_seconds.observe(ended - started)
        self._count(planned, counts)
        self.logger.debug(
            "batch written",
            extra={
                "messages": len(batch),
                "updates": counts.ops,
                "skipped": counts.skipped,
                "modified": counts.modified,
                "raced": counts.raced,
                "rejected": len(planned.rejections) + len(counts.refused),
                "prepare_s": round(started - began, 4),
                "read_s": round(counts.read_s, 4),
                "update_s": round(counts.update_s, 4),
                "total_s": round(ended - began, 4),
            },
        )
        return counts

    async def _store_results(self, items: list[Accepted]) -> ResultCounts:
        results = self.results
        if results is None:  # a writer without a results store (resync) keeps none
            why = "this writer stores no command results"
            return ResultCounts(
                rejections=[Rejection(i.inbound, RejectReason.UNKNOWN_COMMAND, why) for i in items]
            )
        counts = await self._retry(lambda: results.write(items))
        for command, status in counts.stored:
            self.metrics.command_results.labels(command=command, status=status).inc()
        self.metrics.skipped.labels(reason=Skip.DUPLICATE.value).inc(counts.duplicates)
        return counts

    async def _retry(self, call: Callable[[], Awaitable[T]]) -> T:
        return await retry(call, self.policy, on_retry=self._on_retry, on_success=self._on_success)

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.store_ok = False
        self.metrics.store_retries.inc()
        self.logger.warning(
            "mongodb unavailable, retrying",
            extra={"attempt": attempt, "error": str(exc)[:300], "retry_in_s": round(delay, 2)},
        )

    def _on_success(self) -> None:
        if not self.store_ok:
            self.logger.info("mongodb available again")
        self.store_ok = True

    def _count(self, planned: Plan, counts: WriteCounts) -> None:
        now = datetime.now(UTC)
        channels: Counter[str] = Counter()
        for item in planned.writes:
            channels[item.where.channel.value] += 1
            message = item.message
            if isinstance(message, StateMessage | JobStatusMessage) and message.ts:
                self.metrics.lag_seconds.observe(max(0.0, (now - message.ts).total_seconds()))
        for channel, n in channels.items():
            self.metrics.messages.labels(channel=channel).inc(n)
        for reason, n in counts.skips.items():
            self.metrics.skipped.labels(reason=reason.value).inc(n)
        for rejection in [*planned.rejections, *counts.refused]:
            self.metrics.rejected.labels(reason=rejection.reason.value).inc()
            self.logger.debug(
                "message rejected",
                extra={
                    "reason": rejection.reason.value,
                    "detail": rejection.detail[:200],
                    "topic": rejection.inbound.topic[:200],
                },
            )
        rejected = [*planned.rejections, *counts.refused]
        if rejected:
            self.logger.info(
                "messages rejected",
                extra={
                    "count": len(rejected),
                    "reasons": sorted({r.reason.value for r in rejected}),
                },
            )
        if counts.dead_letters_lost:
            self.logger.warning(
                "dead-letter samples not stored (slot race)",
                extra={"count": counts.dead_letters_lost},
            )
        self.metrics.db_ops.inc(counts.ops)
        self.metrics.db_writes.inc(counts.modified)
        self.metrics.dead_letters.inc(counts.dead_letters)


class Bridge:
    """One bridge instance: :meth:`run` until :meth:`stop`, then flush and ack the rest."""

    def __init__(
        self,
        source: Source,
        writer: Writer,
        *,
        batch_max: int,
        flush_s: float,
        gather_s: float = 0.5,
        stop_timeout_s: float = 20.0,
        on_sys: Callable[[Inbound], None] | None = None,
    ) -> None:
        self._source = source
        self._on_sys = on_sys
        self.writer = self._writer = writer
        self._metrics = writer.metrics
        self._log = writer.logger
        self._batch_max = batch_max
        self._flush_s = flush_s
        self._gather_s = max(gather_s, flush_s)
        self._stop_timeout = stop_timeout_s
        self._stopping = False
        self._abandoned = False
        self._writing: asyncio.Future[WriteCounts] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._decoded: asyncio.Queue[Accepted | Rejection | None] = asyncio.Queue()

    def ready(self) -> bool:
        ready = self._source.connected and self._writer.store_ok
        self._metrics.ready.set(1 if ready else 0)
        return ready

    def stop(self) -> None:
        """Stop reading; :meth:`run` writes and acks what it already has, then returns.

        The batch being written may take ``stop_timeout_s`` more (MongoDB may be away,
        or FerretDB slow on a large batch); past that it is abandoned unacknowledged, and
        the broker redelivers its messages when this instance's session reconnects.
        """
        if self._stopping:
            return
        self._stopping = True
        self._log.info("bridge stopping", extra={"stop_timeout_s": self._stop_timeout})
        self._source.close_intake()
        self._deadline = asyncio.get_running_loop().call_later(self._stop_timeout, self._abandon)

    def _abandon(self) -> None:
        if self._writing is not None and not self._writing.done():
            self._abandoned = True
            self._writing.cancel()

    async def run(self) -> None:
        done = False
        decoder = asyncio.create_task(self._decode(), name="bridge decoder")
        try:
            while not done:
                batch, done = await self._collect()
                if batch and not await self._handle(batch):
                    break
        finally:
            decoder.cancel()
            if self._deadline is not None:
                self._deadline.cancel()
        self._log.info("bridge stopped")

    async def _decode(self) -> None:
        """Decode messages as they arrive, so a slow write overlaps the next decoding.

        ``Queue.get`` does not yield while items wait, so a burst of thousands would be
        decoded in one go, leaving the database's answers unread meanwhile (and the
        database idle): the decoder yields to the loop every ``DECODE_SLICE`` messages.
        """
        source = self._source.messages
        done = 0
        while True:
            inbound = await source.get()
            if inbound is not None and inbound.topic.startswith("$SYS/"):
                if self._on_sys is not None:
                    self._on_sys(inbound)  # QoS 0: nothing to acknowledge
                continue
            self._decoded.put_nowait(None if inbound is None else decode(inbound))
            if inbound is None:
                return
            done += 1
            if done % DECODE_SLICE == 0:
                await asyncio.sleep(0)

    async def _collect(self) -> tuple[list[Accepted | Rejection], bool]:
        """Wait for one message, then take more while they keep coming: until none came
        for ``flush_s``, ``batch_max`` is reached, or ``gather_s`` after the first.

        A burst (a fleet's round of states, a will storm) thus makes one batch instead of
        many small ones written while the rest arrives; a single message waits only
        ``flush_s``. Returns the batch and whether the end marker (stop) was seen.
        """
        queue = self._decoded
        first = await queue.get()
        if first is None:
            return [], True
        batch = [first]
        cap = time.monotonic() + self._gather_s
        while len(batch) < self._batch_max:
            item = await _next(queue, min(cap, time.monotonic() + self._flush_s))
            if item is _Empty.TOKEN:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    async def _handle(self, batch: list[Accepted | Rejection]) -> bool:
        """Write then ack one batch; False if the stop deadline abandoned it."""
        self._metrics.batch_size.observe(len(batch))
        waiting = self._source.messages.qsize() + self._decoded.qsize()
        self._metrics.in_flight.set(len(batch) + waiting)
        self._writing = asyncio.ensure_future(self._writer.write(batch))
        try:
            await self._writing
        except asyncio.CancelledError:
            if not self._abandoned:
                raise
            self._log.warning(
                "stop timeout: batch left unacknowledged, the broker "
                "redelivers it to this instance's session",
                extra={"messages": len(batch), "stop_timeout_s": self._stop_timeout},
            )
            return False
        finally:
            self._writing = None
        now = time.monotonic()
        acked = 0
        for item in batch:
            inbound = item.inbound
            acked += self._source.ack(inbound)
            self._metrics.ack_delay_seconds.observe(now - inbound.received_mono)
        self._metrics.acked.inc(acked)
        self._metrics.in_flight.set(self._source.messages.qsize() + self._decoded.qsize())
        return True


class _Empty(Enum):
    TOKEN = 0


Decoded = Accepted | Rejection


async def _next(
    queue: asyncio.Queue[Decoded | None], deadline: float
) -> Decoded | Literal[_Empty.TOKEN] | None:
    """The next queue item, or ``_Empty.TOKEN`` if none came before ``deadline``."""
    try:
        return queue.get_nowait()
    except asyncio.QueueEmpty:
        pass
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return _Empty.TOKEN
    try:
        async with asyncio.timeout(remaining):
            return await queue.get()
    except TimeoutError:
        return _Empty.TOKEN
