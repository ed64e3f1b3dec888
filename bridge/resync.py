"""``outpost bridge resync``: presence rebuilt from the broker's retained messages."""

from __future__ import annotations

import asyncio
import time

from bridge.decode import decode
from bridge.inbound import Inbound
from bridge.mqtt_source import MqttSource
from bridge.service import Writer

__all__ = ["collect_retained", "write_resync"]


async def collect_retained(source: MqttSource, *, idle_s: float, max_s: float) -> list[Inbound]:
    """Take retained messages until none came for ``idle_s`` (or ``max_s`` passed)."""
    batch: list[Inbound] = []
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        try:
            async with asyncio.timeout(idle_s):
                item = await source.messages.get()
        except TimeoutError:
            break
        if item is None:
            break
        if item.retain:
            batch.append(item)
    return batch


async def write_resync(
    batch: list[Inbound], source: MqttSource, writer: Writer, *, chunk: int = 2000
) -> dict[str, int]:
    """Write in chunks, then ack. Presence of devices not registered is rejected."""
    modified = 0
    for start in range(0, len(batch), chunk):
        part = batch[start : start + chunk]
        counts = await writer.write([decode(i) for i in part])
        modified += counts.modified
        for inbound in part:
            source.ack(inbound)
    return {"retained": len(batch), "modified": modified}
