"""The bridge loop's batching and acknowledgement order, with an in-memory transport.

No broker and no database here: the source is a queue that records acks, the writer
records the batches it is given. What is checked is the loop's own decisions: a batch
takes what queued up (up to ``batch_max``), grows while a write is slow, and nothing is
acknowledged before the write that contains it returned.
"""

from __future__ import annotations

import asyncio
import logging

from bridge.decode import Accepted, Rejection
from bridge.inbound import Inbound
from bridge.metrics import BridgeMetrics
from bridge.service import Bridge
from tests.unit.bridge.helpers import state


class _Source:
    def __init__(self) -> None:
        self.messages: asyncio.Queue[Inbound | None] = asyncio.Queue()
        self.connected = True
        self.acked: list[int] = []

    def ack(self, inbound: Inbound) -> bool:
        self.acked.append(inbound.mid)
        return True

    def close_intake(self) -> None:
        self.messages.put_nowait(None)


class _Writer:
    """Records batches; ``gate`` (if set) holds the first write until released."""

    def __init__(self, source: _Source, gate: asyncio.Event | None = None) -> None:
        self.source = source
        self.gate = gate
        self.metrics = BridgeMetrics()
        self.logger = logging.getLogger("test.bridge")
        self.batches: list[list[int]] = []
        self.acked_before_write: list[int] = []
        self.started = asyncio.Event()

    async def write(self, batch: list[Accepted | Rejection]) -> None:
        mids = [m.inbound.mid for m in batch]
        self.acked_before_write.extend(m for m in mids if m in self.source.acked)
        self.batches.append(mids)
        self.started.set()
        if self.gate is not None and len(self.batches) == 1:
            await self.gate.wait()


def _messages(n: int) -> list[Inbound]:
    return [state(f"dev-{i % 7}", 1, i + 1) for i in range(n)]


async def _run(bridge: Bridge, source: _Source) -> None:
    source.close_intake()
    async with asyncio.timeout(5):
        await bridge.run()


async def test_a_queued_backlog_is_split_only_at_batch_max() -> None:
    source = _Source()
    writer = _Writer(source)
    sent = _messages(25)
    for m in sent:
        source.messages.put_nowait(m)
    bridge = Bridge(source, writer, batch_max=10, flush_s=0.0)  # type: ignore[arg-type]
    await _run(bridge, source)
    assert [len(b) for b in writer.batches] == [10, 10, 5]
    assert source.acked == [m.mid for m in sent]  # every message, in receive order


async def test_messages_arriving_during_a_slow_write_make_one_next_batch() -> None:
    source = _Source()
    gate = asyncio.Event()
    writer = _Writer(source, gate)
    bridge = Bridge(source, writer, batch_max=1000, flush_s=0.0)  # type: ignore[arg-type]
    first, *rest = _messages(301)
    source.messages.put_nowait(first)
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(writer.started.wait(), 5)
    for m in rest:  # the database is slow: these queue up meanwhile
        source.messages.put_nowait(m)
    async with asyncio.timeout(5):  # the decoder takes them all while the write waits
        while source.messages.qsize():  # noqa: ASYNC110 (yield: the decoder runs)
            await asyncio.sleep(0)
    assert source.acked == []  # the first write has not returned: nothing acked
    gate.set()
    source.close_intake()
    await asyncio.wait_for(task, 5)
    assert [len(b) for b in writer.batches] == [1, 300]
    assert writer.acked_before_write == []
    assert source.acked == [first.mid] + [m.mid for m in rest]


async def test_a_trickle_is_written_as_it_comes() -> None:
    source = _Source()
    writer = _Writer(source)
    bridge = Bridge(source, writer, batch_max=1000, flush_s=0.0)  # type: ignore[arg-type]
    task = asyncio.create_task(bridge.run())
    for m in _messages(3):
        writer.started.clear()
        source.messages.put_nowait(m)
        await asyncio.wait_for(writer.started.wait(), 5)  # written alone, not kept waiting
    source.close_intake()
    await asyncio.wait_for(task, 5)
    assert [len(b) for b in writer.batches] == [1, 1, 1]
    assert len(source.acked) == 3


class _StuckWriter(_Writer):
    """MongoDB is away: the write never returns (the real one retries for ever)."""

    async def write(self, batch: list[Accepted | Rejection]) -> None:
        self.batches.append([m.inbound.mid for m in batch])
        self.started.set()
        await asyncio.Event().wait()


async def test_stop_abandons_a_stuck_batch_at_the_deadline_without_acking_it() -> None:
    source = _Source()
    writer = _StuckWriter(source)
    bridge = Bridge(
        source,
        writer,
        batch_max=1000,
        flush_s=0.0,  # type: ignore[arg-type]
        stop_timeout_s=0.2,
    )
    for m in _messages(5):
        source.messages.put_nowait(m)
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(writer.started.wait(), 5)
    loop = asyncio.get_running_loop()
    stopped_at = loop.time()
    bridge.stop()
    await asyncio.wait_for(task, 5)  # returns instead of hanging on the stuck write
    assert 0.15 <= loop.time() - stopped_at < 2
    assert [len(b) for b in writer.batches] == [5]
    assert source.acked == []  # left for the broker to redeliver


async def test_stop_still_flushes_a_batch_that_finishes_within_the_deadline() -> None:
    source = _Source()
    gate = asyncio.Event()
    writer = _Writer(source, gate)
    bridge = Bridge(
        source,
        writer,
        batch_max=1000,
        flush_s=0.0,  # type: ignore[arg-type]
        stop_timeout_s=5,
    )
    sent = _messages(4)
    for m in sent:
        source.messages.put_nowait(m)
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(writer.started.wait(), 5)
    bridge.stop()
    asyncio.get_running_loop().call_later(0.1, gate.set)  # the write completes after stop
    await asyncio.wait_for(task, 5)
    assert source.acked == [m.mid for m in sent]
