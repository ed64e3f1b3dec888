"""No device message can stop the bridge.

The messages that used to make it exit (and exit again after every restart, since the
broker redelivers what was not acknowledged) are rejected at decode with a reason,
counted, dead-lettered and acknowledged, and a valid message from another device that
follows them is stored. Generated payloads (hypothesis) go through decode and the real
database: each is stored, or rejected with a reason; nothing else happens.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from bridge.batch import Registered, plan, with_known
from bridge.decode import Accepted, decode
from bridge.inbound import Inbound
from bridge.mongo_sink import MongoSink
from outpost.store import Store
from schemas.documents import DEAD_LETTERS, DEVICE_STATUS, DEVICES

from .helpers import Publisher, eventually, http_get, running_bridge, state_payload
from .helpers import settings as bridge_settings

pytestmark = pytest.mark.integration


def _state(device: str, seq: int, **fields: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "device_id": device,
        "key": {"session": 1, "seq": seq},
        "firmware": "1.0.0",
        "hardware_model": "ap-1",
        **fields,
    }
    return json.dumps(body).encode()


POISON = {  # each of these made the bridge exit before its payloads were bounded
    "dot in a counter key": {"counters": {"a.b": 1}},
    "operator as a counter key": {"counters": {"$inc": 1}},
    "NUL in a counter key": {"counters": {"a\u0000b": 1}},
    "uptime beyond 64 bits": {"uptime_s": 10**30},
    "counter beyond 64 bits": {"counters": {"n": 2**64}},
}


async def test_poison_messages_are_rejected_and_the_next_valid_one_is_stored(
    broker, mongo, mongo_db, unique
):
    bad, good = f"p{unique}-bad", f"p{unique}-good"
    await mongo_db[DEVICES].insert_many([{"_id": bad, "tenant_id": "t1"}, {"_id": good}])
    order = list(POISON.items())
    random.Random(unique).shuffle(order)  # "sent in any order": a different one per run
    pub = Publisher(broker, f"p{unique}")
    ready_codes: list[int] = []
    try:
        async with running_bridge(bridge_settings(broker, mongo.url, mongo_db.name, unique)) as (
            running,
            metrics,
        ):
            stop = asyncio.Event()

            async def probe_ready() -> None:
                while not stop.is_set():
                    code, _ = await asyncio.to_thread(http_get, running.http_port, "/readyz")
                    ready_codes.append(code)
                    await asyncio.sleep(0.1)

            prober = asyncio.create_task(probe_ready())
            for seq, (_, fields) in enumerate(order, start=1):
                pub.publish(f"devices/{bad}/state", _state(bad, seq, **fields))
            pub.publish(f"devices/{good}/state", state_payload(good, 1, 1, n=7))
            sent = time.monotonic()
            await pub.flushed(10)

            async def stored() -> bool:
                return await mongo_db[DEVICE_STATUS].find_one({"_id": good}) is not None

            await eventually(stored, within=5, what="the valid message stored")
            stored_after = time.monotonic() - sent
            await eventually(
                lambda: _count(metrics, "schema", len(POISON)), within=5, what="rejections"
            )
            stop.set()
            await prober
            letters = await mongo_db[DEAD_LETTERS].find({"reason": "schema"}).to_list()
    finally:
        pub.close()
    assert stored_after < 5
    assert ready_codes
    assert set(ready_codes) == {200}  # healthy the whole time
    assert await mongo_db[DEVICE_STATUS].find_one({"_id": bad}) is None
    assert len(letters) == len(POISON)
    assert all("\x00" not in d["sample"] and "\x00" not in d["detail"] for d in letters)
    doc = await mongo_db[DEVICE_STATUS].find_one({"_id": good})
    assert doc["state"]["counters"] == {"n": 7}


async def _count(metrics, reason: str, n: int) -> bool:
    return metrics.value("outpost_bridge_rejected_total", reason=reason) >= n


# -- generated payloads ----------------------------------------------------------------

_text = st.text(max_size=80)  # any unicode, NUL and control characters included
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
_values = st.recursive(
    st.one_of(st.none(), st.booleans(), _numbers, _text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=8,
)
_states = st.fixed_dictionaries(
    {
        "firmware": st.one_of(_text, st.just("1.0.0")),
        "hardware_model": st.one_of(_text, st.just("ap-1")),
        "uptime_s": _numbers,
        "counters": st.dictionaries(
            st.one_of(_text, st.sampled_from(["a.b", "$x", "ok", "n_1"])), _numbers, max_size=5
        ),
        "config": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "version": _numbers,
                    "status": st.sampled_from(["applied", "rejected", "x"]),
                    "error": _text,
                }
            ),
        ),
    },
    optional={"extra": _values},
)


def _encoded(fields: dict[str, object]) -> bytes:
    body = {"v": 1, "device_id": "gen-device", "key": {"session": 1, "seq": 1}, **fields}
    return json.dumps(body, allow_nan=True).encode("utf-8", errors="surrogatepass")


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fields=_states)
def test_any_generated_state_is_stored_or_rejected_never_raises(mongo, fields):
    payload = _encoded(fields)
    inbound = Inbound(
        "devices/gen-device/state", payload, 1, 1, False, 1, datetime.now(UTC), time.monotonic()
    )
    decoded = decode(inbound)  # never raises: an Accepted or a Rejection
    if not isinstance(decoded, Accepted):
        return
    counts = asyncio.run(_write(mongo.url, decoded))
    # whatever decode lets through, the database stores (a write it refused would be
    # dead-lettered and the bridge would go on, but it would mean decode's bounds miss
    # something)
    assert [r.detail for r in counts.refused] == []
    assert counts.modified == 1
    counters = decoded.message.counters  # type: ignore[union-attr]
    assert all(not isinstance(v, float) or math.isfinite(v) for v in counters.values())


async def _write(url: str, item: Accepted):
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(url, tz_aware=True)
    db = client["poison_generated"]
    try:
        await db[DEVICE_STATUS].delete_many({})
        sink = MongoSink(Store(db), dead_letter_cap=5, state_refresh=timedelta(minutes=5))
        planned = with_known(plan([item]), {"gen-device": Registered("t1")}, {})
        return await sink.write(planned, datetime.now(UTC))
    finally:
        await client.close()
