"""1,000 malformed messages of varied kinds next to valid traffic."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from schemas.documents import DEAD_LETTERS, DEVICE_STATUS, DEVICES

from .helpers import Publisher, eventually, http_get, running_bridge, settings, state_payload

pytestmark = pytest.mark.integration

DEVICES_N = 20
CAP = 10


def _bad(i: int, unique: str) -> tuple[str, bytes, str]:
    """The i-th malformed message: (topic, payload, expected reason)."""
    dev = f"d{unique}-{i % DEVICES_N}"
    kind = i % 6
    if kind == 0:
        return f"devices/{dev}/state", b"{oops" + bytes([0xFF]), "invalid_json"
    if kind == 1:
        return f"devices/{dev}/state", json.dumps({"v": 1, "device_id": dev}).encode(), "schema"
    if kind == 2:
        return f"devices/{dev}/state", b"[" + b"1," * 20_000 + b"1]", "too_large"
    if kind == 3:
        other = f"d{unique}-{(i + 1) % DEVICES_N}"
        return f"devices/{dev}/state", state_payload(other, 1, i), "id_mismatch"
    if kind == 4:
        ghost = f"x{unique}-{i}"
        return f"devices/{ghost}/state", state_payload(ghost, 1, i), "unknown_device"
    return f"devices/{dev}/presence", json.dumps([1, 2]).encode(), "schema"


async def test_malformed_messages_are_rejected_counted_sampled_and_valid_traffic_stored(
    broker, mongo, mongo_db, unique
):
    ids = [f"d{unique}-{i}" for i in range(DEVICES_N)]
    await mongo_db[DEVICES].insert_many([{"_id": i} for i in ids])
    expected: Counter[str] = Counter()
    pub = Publisher(broker, f"p{unique}")
    cfg = settings(broker, mongo.url, mongo_db.name, unique, dead_letter_cap=CAP)
    try:
        async with running_bridge(cfg) as (running, metrics):
            for i in range(1000):
                topic, payload, reason = _bad(i, unique)
                pub.publish(topic, payload)
                expected[reason] += 1
                if i % 10 == 0:  # valid traffic interleaved: 100 states over 20 devices
                    dev = ids[(i // 10) % DEVICES_N]
                    pub.publish(f"devices/{dev}/state", state_payload(dev, 1, i + 1, n=i))
            await pub.flushed(30)

            async def all_counted() -> bool:
                return all(
                    metrics.value("outpost_bridge_rejected_total", reason=r) == n
                    for r, n in expected.items()
                )

            try:
                await eventually(all_counted, within=60, what="every rejection counted")
            except AssertionError:
                seen = {
                    r: metrics.value("outpost_bridge_rejected_total", reason=r) for r in expected
                }
                raise AssertionError(f"rejections {seen}, expected {dict(expected)}") from None
            await eventually(lambda: _acked(metrics, 1100), within=30, what="all acked")

            for i, dev in enumerate(ids):
                doc = await mongo_db[DEVICE_STATUS].find_one({"_id": dev})
                last = max(n for n in range(0, 1000, 10) if (n // 10) % DEVICES_N == i)
                assert doc["state"]["counters"] == {"n": last}, dev
            letters = await mongo_db[DEAD_LETTERS].find().to_list()
            per_reason = Counter(d["reason"] for d in letters)
            assert per_reason == {r: CAP for r in expected}
            assert await mongo_db[DEVICE_STATUS].count_documents({}) == DEVICES_N
            status, _ = await asyncio.to_thread(http_get, running.http_port, "/readyz")
            assert status == 200
            status, body = await asyncio.to_thread(http_get, running.http_port, "/metrics")
            assert 'outpost_bridge_rejected_total{reason="too_large"} 167.0' in body
    finally:
        pub.close()


async def _acked(metrics, n: int) -> bool:
    return metrics.value("outpost_bridge_acked_total") >= n
