"""A batch larger than the writes the sink sends before building the rest (HEAD).

The first HEAD writes of a batch go out while the others are being built; every message
must still land, inserts and updates alike on both sides of that split, and the sink must
remember what each write stored (:class:`bridge.mongo_sink.StoredKeys`): a redelivered
batch then writes nothing and the next one only updates.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from bridge.batch import Registered, plan, with_known
from bridge.decode import Accepted, Rejection, decode
from bridge.inbound import Inbound
from bridge.mongo_sink import HEAD, MongoSink, WriteCounts
from outpost.store import Store
from schemas.documents import DEVICE_STATUS, order_key_str
from schemas.protocol import OrderKey

from .helpers import state_payload

pytestmark = pytest.mark.integration

FLEET = HEAD + 1_200


def _batch(ids: list[str], seq: int) -> list[Accepted | Rejection]:
    now = datetime.now(UTC)
    return [
        decode(
            Inbound(
                f"devices/{d}/state",
                state_payload(d, 1, seq, n=seq),
                n % 65535 + 1,
                1,
                False,
                1,
                now,
                time.monotonic(),
            )
        )
        for n, d in enumerate(ids)
    ]


async def _write(sink: MongoSink, ids: list[str], seq: int) -> WriteCounts:
    registered = {d: Registered("t1") for d in ids}
    return await sink.write(with_known(plan(_batch(ids, seq)), registered, {}), datetime.now(UTC))


async def test_a_batch_beyond_the_head_lands_whole_and_is_remembered(mongo_db, unique) -> None:
    ids = [f"lb{unique}-{i:05}" for i in range(FLEET)]
    sink = MongoSink(Store(mongo_db), dead_letter_cap=5, state_refresh=timedelta(minutes=5))
    existing = ids[::2]
    assert (await _write(sink, existing, 1)).modified == len(existing)

    mixed = ids[:]
    random.Random(unique).shuffle(mixed)  # inserts and updates on both sides of HEAD
    counts = await _write(sink, mixed, 2)
    assert (counts.ops, counts.modified, counts.raced, counts.refused) == (FLEET, FLEET, 0, [])
    docs = await mongo_db[DEVICE_STATUS].find({}, {"state.k": 1, "tenant_id": 1}).to_list()
    k2 = order_key_str(OrderKey(session=1, seq=2))
    assert len(docs) == FLEET
    assert {d["state"]["k"] for d in docs} == {k2}
    assert {d["tenant_id"] for d in docs} == {"t1"}

    again = await _write(sink, mixed, 2)  # redelivered: known as stored, nothing sent
    assert (again.ops, again.skipped) == (0, FLEET)
    following = await _write(sink, ids, 3)  # every document known to exist: updates only
    assert (following.ops, following.modified, following.raced) == (FLEET, FLEET, 0)
