from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.batch import Registered, plan, update_op, with_known
from bridge.decode import Accepted, Rejection, content_hash, decode
from bridge.mongo_sink import KnownIds, MongoSink, StoredKeys
from outpost.store import Applied, Insert, Update
from schemas.protocol import RejectReason, StateMessage

from .helpers import inbound, job, presence, state

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _op(item):
    accepted = decode(item)
    assert isinstance(accepted, Accepted)
    return update_op(accepted, T0)


def test_presence_update_is_conditional_on_an_older_key():
    op = _op(presence("dev-a", 3, 4, "offline"))
    k = "000000:00000000000003.00000000000004"
    assert op.filter == {
        "_id": "dev-a",
        "$or": [{"presence.k": {"$exists": False}}, {"presence.k": {"$lt": k}}],
    }
    assert op.update["$set"]["presence"]["status"] == "offline"
    assert op.update["$set"]["presence"]["k"] == k
    assert not op.upsert


def test_state_update_skips_identical_content_until_the_refresh_is_due():
    op = _op(state("dev-a", 1, 2, uptime_s=5))
    h = op.update["$set"]["state"]["h"]
    older, changed = op.filter["$and"]
    assert older["$or"][1] == {"state.k": {"$lt": "000000:00000000000001.00000000000002"}}
    assert changed == {"$or": [{"state.h": {"$ne": h}}, {"state.updated_at": {"$lt": T0}}]}
    # uptime and key are not content: the hash of a repeat is the same
    first = decode(state("dev-a", 1, 2, uptime_s=5))
    repeat = decode(state("dev-a", 7, 9, uptime_s=500))
    other = decode(state("dev-a", 7, 9, firmware="2.0"))
    msgs = [a.message for a in (first, repeat, other) if isinstance(a, Accepted)]
    assert all(isinstance(m, StateMessage) for m in msgs)
    assert content_hash(msgs[0]) == content_hash(msgs[1])  # type: ignore[arg-type]
    assert content_hash(msgs[0]) != content_hash(msgs[2])  # type: ignore[arg-type]
    # taken once, at decode, and what the update conditions on and stores
    assert isinstance(first, Accepted)
    assert first.h == content_hash(msgs[0])  # type: ignore[arg-type]
    assert h == first.h
    assert getattr(decode(presence("dev-a", 1, 2, "online")), "h", "missing") is None


def test_job_status_goes_to_its_own_report_document():
    op = _op(job("dev-a", "job-7", 1, 3, "installing"))
    assert op.filter["_id"] == "job-7:dev-a"
    assert op.update["$set"]["status"] == "installing"
    assert "last_seen" not in op.update["$set"]


def test_dead_letters_are_a_ring_per_reason():
    sink = MongoSink(None, dead_letter_cap=3)  # type: ignore[arg-type]
    bad = [
        Rejection(inbound("devices/dev-a/state", b"{"), RejectReason.JSON, "x") for _ in range(10)
    ]
    ops = sink.dead_letter_ops(bad)
    ids = {op.filter["_id"] for op in ops}
    assert len(ops) == 3
    assert all(i.startswith("invalid_json:") for i in ids)
    assert len(ids | {op.filter["_id"] for op in sink.dead_letter_ops(bad)}) == 3


async def test_known_ids_cache_positives_and_negatives_each_for_their_ttl():
    asked: list[set[str]] = []
    now = [0.0]
    epoch = [0]

    async def lookup(ids):
        asked.append(set(ids))
        return {i: Registered("t1", epoch[0]) for i in ids if i.startswith("dev")}

    known = KnownIds(lookup, unknown_ttl=5, known_ttl=60, clock=lambda: now[0])
    assert await known.known({"dev-a", "ghost"}) == {"dev-a": Registered("t1", 0)}
    assert await known.known({"dev-a", "ghost"}) == {"dev-a": Registered("t1", 0)}
    now[0] = 6
    epoch[0] = 1  # an admin reset dev-a's keys: seen once its facts are read again
    assert await known.known({"dev-a", "ghost"}) == {"dev-a": Registered("t1", 0)}
    now[0] = 61
    assert await known.known({"dev-a"}) == {"dev-a": Registered("t1", 1)}
    assert asked == [{"dev-a", "ghost"}, {"ghost"}, {"dev-a"}]


async def test_stale_facts_are_read_again_with_every_id_due_within_a_quarter_ttl_at_once():
    asked: list[set[str]] = []
    now = [0.0]
    gone: set[str] = set()

    async def lookup(ids):
        asked.append(set(ids))
        return {i: Registered("t1") for i in ids if i not in gone}

    known = KnownIds(lookup, unknown_ttl=5, known_ttl=100, clock=lambda: now[0])
    fleet = {f"dev-{i}" for i in range(1000)}
    await known.known(fleet)
    now[0] = 20
    await known.known({"dev-late"})  # first seen later: due at 120, within 25 of 100
    now[0] = 99.9
    await known.known(fleet)
    assert len(asked) == 2  # nothing is due before its ttl
    now[0] = 100
    gone.add("dev-7")  # decommissioned meanwhile
    assert "dev-7" not in await known.known({"dev-1"})  # one id in the batch is due...
    assert asked[-1] == fleet | {"dev-late"}  # ...and the whole wave is read in one lookup
    assert await known.known({"dev-7"}) == {}  # remembered as unknown, not asked again
    now[0] = 150
    await known.known(fleet | {"dev-late"})
    assert asked[3:] == [{"dev-7"}]  # the rest is fresh until 200; dev-7 unknown since 105


def test_stored_keys_read_once_then_follow_own_writes():
    known = StoredKeys(capacity=10)
    a, b = ("device_status", "dev-a"), ("device_status", "dev-b")
    assert known.unknown([a, b]) == {a, b}
    known.read("device_status", ["dev-a", "dev-b"], [{"_id": "dev-a", "state": {"k": "1"}}])
    assert known.unknown([a, b]) == set()  # dev-b is known to be absent
    assert known.exists(a)
    assert not known.exists(b)
    item = decode(state("dev-b", 1, 2, uptime_s=5))
    assert isinstance(item, Accepted)
    known.wrote(item)
    assert known.exists(b)
    view = known.view(b)
    assert view is not None
    assert view["state"]["k"] == "000000:00000000000001.00000000000002"
    assert view["state"]["h"] == update_op(item, T0).update["$set"]["state"]["h"]
    known.read("device_status", [f"x{i}" for i in range(20)], [])  # over capacity: forget
    assert known.unknown([a]) == {a}


class _Store:
    """Records the sink's reads and writes; inserts of an existing ``_id`` are duplicates."""

    def __init__(self) -> None:
        self.docs: set[tuple[str, str]] = set()
        self.reads: list[tuple[str, list[str], dict]] = []
        self.writes: list[tuple[str, object]] = []

    async def find_ids(self, collection, ids, projection=None):
        self.reads.append((collection, list(ids), dict(projection or {})))
        return []

    async def apply(self, collection, writes):
        applied = Applied()
        for i, write in enumerate(writes):
            self.writes.append((collection, write))
            if isinstance(write, Insert):
                t = (collection, write.document["_id"])
                if t in self.docs:
                    applied.duplicates.append(i)
                else:
                    self.docs.add(t)
                    applied.inserted += 1
            else:
                applied.modified += 1
        return applied


def _planned(*items):
    return with_known(plan([decode(i) for i in items]), {"dev-a": Registered("t1")}, {})


async def test_sink_writes_presence_and_state_of_a_device_to_two_documents():
    store = _Store()
    refresh = timedelta(minutes=5)
    sink = MongoSink(store, dead_letter_cap=3, state_refresh=refresh)  # type: ignore[arg-type]
    now = datetime.now(UTC)  # the messages' receive time
    await sink.write(_planned(presence("dev-a", 2, 1), state("dev-a", 2, 2, "2.0.0")), now)
    assert sorted(store.reads) == [
        ("device_presence", ["dev-a"], {"presence.k": 1}),
        ("device_status", ["dev-a"], {"state.k": 1, "state.h": 1, "state.updated_at": 1}),
    ]
    inserts = {c: w.document for c, w in store.writes if isinstance(w, Insert)}
    assert set(inserts) == {"device_presence", "device_status"}
    assert inserts["device_presence"]["presence"]["status"] == "online"
    assert inserts["device_status"]["state"]["firmware"] == "2.0.0"
    assert all(d["tenant_id"] == "t1" and "last_seen" in d for d in inserts.values())
    assert "state" not in inserts["device_presence"]
    assert "presence" not in inserts["device_status"]

    # then: a replayed presence and an identical state within the refresh interval cost
    # nothing (no read, no write); the state once the interval has passed costs one update
    store.writes.clear()
    again = _planned(presence("dev-a", 2, 1), state("dev-a", 2, 3, "2.0.0"))
    counts = await sink.write(again, now + timedelta(minutes=1))
    assert (store.writes, counts.skipped, len(store.reads)) == ([], 2, 2)
    later = _planned(state("dev-a", 2, 4, "2.0.0"))
    await sink.write(later, now + refresh + timedelta(minutes=1))
    ((collection, write),) = store.writes
    assert collection == "device_status"
    assert isinstance(write, Update)
    assert set(write.update["$set"]) == {"state", "last_seen"}
