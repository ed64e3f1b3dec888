from __future__ import annotations

from bridge.decode import Accepted, Rejection, decode
from bridge.mongo_sink import KnownDevices, MongoSink, content_hash, update_op
from schemas.protocol import RejectReason, StateMessage

from .helpers import inbound, job, presence, state


def _op(item):
    accepted = decode(item)
    assert isinstance(accepted, Accepted)
    return update_op(accepted)


def test_presence_update_is_conditional_on_an_older_key():
    collection, op = _op(presence("dev-a", 3, 4, "offline"))
    assert collection == "devices"
    k = "00000000000003.00000000000004"
    assert op._filter == {
        "_id": "dev-a",
        "$or": [{"presence.k": {"$exists": False}}, {"presence.k": {"$lt": k}}],
    }
    assert op._doc["$set"]["presence"]["status"] == "offline"
    assert op._doc["$set"]["presence"]["k"] == k
    assert op._upsert is None or op._upsert is False


def test_state_update_skips_identical_content():
    _, op = _op(state("dev-a", 1, 2, uptime_s=5))
    h = op._doc["$set"]["state"]["h"]
    assert op._filter["state.h"] == {"$ne": h}
    # uptime and key are not content: the hash of a repeat is the same
    first = decode(state("dev-a", 1, 2, uptime_s=5))
    repeat = decode(state("dev-a", 7, 9, uptime_s=500))
    changed = decode(state("dev-a", 7, 9, firmware="2.0"))
    msgs = [a.message for a in (first, repeat, changed) if isinstance(a, Accepted)]
    assert all(isinstance(m, StateMessage) for m in msgs)
    assert content_hash(msgs[0]) == content_hash(msgs[1])  # type: ignore[arg-type]
    assert content_hash(msgs[0]) != content_hash(msgs[2])  # type: ignore[arg-type]


def test_job_status_goes_to_its_execution():
    collection, op = _op(job("dev-a", "job-7", 1, 3, "installing"))
    assert collection == "job_executions"
    assert op._filter["_id"] == "job-7:dev-a"
    assert op._doc["$set"]["report"]["status"] == "installing"
    assert "last_seen" not in op._doc["$set"]


def test_dead_letters_are_a_ring_per_reason():
    sink = MongoSink(None, chunk=64, dead_letter_cap=3)  # type: ignore[arg-type]
    bad = [
        Rejection(inbound("devices/dev-a/state", b"{"), RejectReason.JSON, "x") for _ in range(10)
    ]
    ops = sink.dead_letter_ops(bad)
    ids = {op._filter["_id"] for op in ops}
    assert len(ops) == 3
    assert all(i.startswith("invalid_json:") for i in ids)
    assert len(ids | {op._filter["_id"] for op in sink.dead_letter_ops(bad)}) == 3


async def test_known_devices_cache_positives_and_remember_negatives_for_a_ttl():
    asked: list[set[str]] = []
    now = [0.0]

    async def lookup(ids):
        asked.append(set(ids))
        return {i for i in ids if i.startswith("dev")}

    known = KnownDevices(lookup, unknown_ttl=5, clock=lambda: now[0])
    assert await known.known({"dev-a", "ghost"}) == {"dev-a"}
    assert await known.known({"dev-a", "ghost"}) == {"dev-a"}
    now[0] = 6
    assert await known.known({"dev-a", "ghost"}) == {"dev-a"}
    assert asked == [{"dev-a", "ghost"}, {"ghost"}]
