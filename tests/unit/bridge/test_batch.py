from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bridge.batch import (
    STORED_KEYS,
    Registered,
    Skip,
    coalesce,
    insert_op,
    key,
    needed,
    plan,
    skip_reason,
    target,
    update_op,
    with_known,
)
from bridge.decode import Accepted, Rejection, content_hash, decode
from schemas.protocol import RejectReason, StateMessage

from .helpers import inbound, job, presence, state


def _accepted(*items):
    out = [decode(i) for i in items]
    assert all(isinstance(a, Accepted) for a in out)
    return out


def test_coalesce_keeps_newest_per_device_and_channel_whatever_the_order():
    items = _accepted(
        state("dev-a", 1, 5, "5"),
        state("dev-a", 1, 9, "9"),
        state("dev-a", 1, 7, "7"),
        presence("dev-a", 1, 1),
        state("dev-b", 2, 1, "b"),
    )
    kept = coalesce(items)
    by_slot = {(k.device_id, k.where.channel.value): k.message for k in kept}
    assert len(kept) == 3
    newest = by_slot[("dev-a", "state")]
    assert isinstance(newest, StateMessage)
    assert newest.firmware == "9"


def test_coalesce_orders_by_session_before_seq():
    kept = coalesce(_accepted(state("dev-a", 2, 1, "new"), state("dev-a", 1, 99, "old")))
    assert [k.message.firmware for k in kept] == ["new"]  # type: ignore[union-attr]


def test_jobs_are_coalesced_per_job():
    kept = coalesce(
        _accepted(job("dev-a", "j1", 1, 1), job("dev-a", "j2", 1, 2), job("dev-a", "j1", 1, 3))
    )
    assert sorted((k.where.job_id, k.message.key.seq) for k in kept) == [("j1", 3), ("j2", 2)]


def test_plan_rejects_bad_input_with_reasons_and_keeps_the_good():
    batch = [
        inbound("devices/dev-a/state", b"{not json"),
        inbound("devices/dev-a/state", {"v": 1, "device_id": "dev-a"}),
        inbound("devices/dev-a/state", b"x" * 40_000),
        inbound(
            "devices/dev-a/presence",
            {"v": 1, "device_id": "dev-b", "status": "online", "key": {"session": 1, "seq": 1}},
        ),
        inbound("devices/dev-a/config", {"v": 1}),
        inbound("other/topic", {"v": 1}),
        state("dev-a", 1, 1),
    ]
    decoded = plan([decode(i) for i in batch])
    reasons = [r.reason for r in decoded.rejections]
    assert reasons == [
        RejectReason.JSON,
        RejectReason.SCHEMA,
        RejectReason.TOO_LARGE,
        RejectReason.ID_MISMATCH,
        RejectReason.NOT_FROM_DEVICE,
        RejectReason.TOPIC,
    ]
    assert decoded.device_ids == frozenset({"dev-a"})
    assert len(decoded.writes) == 1


def test_unknown_devices_and_jobs_are_rejected_and_the_rest_coalesced():
    decoded = plan(
        [
            decode(i)
            for i in (
                state("dev-a", 1, 1),
                state("dev-a", 1, 2),
                state("ghost-1", 1, 1),
                job("dev-a", "j1", 1, 3),
                job("dev-a", "j2", 1, 4),
            )
        ]
    )
    assert decoded.execution_ids == frozenset({"j1:dev-a", "j2:dev-a"})
    planned = with_known(decoded, {"dev-a": Registered("t1")}, {"j1:dev-a": Registered("t1")})
    assert sorted(w.message.key.seq for w in planned.writes) == [2, 3]
    assert sorted(r.reason for r in planned.rejections) == [
        RejectReason.UNKNOWN_DEVICE,
        RejectReason.UNKNOWN_JOB,
    ]
    assert all(isinstance(r, Rejection) for r in planned.rejections)
    assert planned.tenants == {"dev-a": "t1"}


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_needed_skips_what_the_stored_document_already_has():
    newer = decode(state("dev-a", 1, 5, n=1))
    assert isinstance(newer, Accepted)
    h = content_hash(newer.message)  # type: ignore[arg-type]
    fresh = T0 - timedelta(minutes=1)
    assert needed(newer, None, T0)  # no document yet: inserted
    assert needed(newer, {"_id": "dev-a"}, T0)
    assert needed(newer, {"state": {"k": "000000:00000000000001.00000000000004", "h": "x"}}, T0)
    assert not needed(newer, {"state": {"k": "000000:00000000000001.00000000000005", "h": "x"}}, T0)
    same = {"state": {"k": "000000:00000000000001.00000000000004", "h": h, "updated_at": T0}}
    assert not needed(newer, same, fresh)  # identical, refreshed recently
    assert needed(newer, same, T0 + timedelta(seconds=1))  # identical, but stale: refresh


def test_skip_reasons_and_a_key_reset_by_a_new_epoch():
    stored = {"state": {"k": "000000:00000000000009.00000000000005", "h": "x"}}
    after_reset = decode(state("dev-a", 1, 1, n=1))  # the device's counters started over
    assert isinstance(after_reset, Accepted)
    assert skip_reason(after_reset, stored, T0) is Skip.OLDER
    planned = with_known(plan([after_reset]), {"dev-a": Registered("t1", key_epoch=1)}, {})
    (item,) = planned.writes
    assert item.epoch == 1
    assert skip_reason(item, stored, T0) is None  # epoch 1 is newer than any key of 0
    assert update_op(item, T0).update["$set"]["state"]["k"].startswith("000001:")


def test_a_message_without_a_document_is_an_insert_with_the_tenant():
    item = decode(presence("dev-a", 3, 4, "offline"))
    assert isinstance(item, Accepted)
    op = insert_op(item, "t1")
    assert target(item) == ("device_presence", "dev-a")
    assert op.document["_id"] == "dev-a"
    assert op.document["tenant_id"] == "t1"
    assert op.document["presence"]["status"] == "offline"
    assert op.document["last_seen"] == item.inbound.received_at
    assert "state" not in op.document
    report = decode(job("dev-a", "job-7", 1, 3, "installing"))
    assert isinstance(report, Accepted)
    assert target(report) == ("job_reports", "job-7:dev-a")
    doc = insert_op(report, "t1").document
    assert (doc["job_id"], doc["device_id"], doc["status"]) == ("job-7", "dev-a", "installing")
    assert "last_seen" not in doc


def test_presence_and_state_of_one_device_write_two_documents():
    """One document per device and channel: two bridge instances handling a device's
    presence and its state at the same instant never write the same document (FerretDB
    would keep only one of the two writes)."""
    online, report = _accepted(presence("dev-a", 2, 1), state("dev-a", 2, 2, "2.0.0"))
    assert target(online) == ("device_presence", "dev-a")
    assert target(report) == ("device_status", "dev-a")
    assert target(online) != target(report)
    assert set(STORED_KEYS) == {"device_presence", "device_status", "job_reports"}
    for item, mine, other in ((online, "presence", "state"), (report, "state", "presence")):
        assert all(f.startswith(mine) for f in STORED_KEYS[target(item)[0]])
        inserted = insert_op(item, "t1").document
        updated = update_op(item, T0)
        assert set(inserted) == {"_id", "tenant_id", mine, "last_seen"}
        assert set(updated.update["$set"]) == {mine, "last_seen"}
        assert other not in str(updated.filter)  # the condition reads only its own channel
        assert skip_reason(item, {"_id": "dev-a", other: {"k": "f" * 40}}, T0) is None


def test_identical_state_is_refreshed_at_most_once_per_interval_presence_never_repeats():
    """Issue 10 item 4 still holds with presence apart: a device repeating identical state
    costs at most one write per refresh interval, a silent fleet none; presence and a
    replayed presence key are not written twice."""
    first, repeat = _accepted(state("dev-a", 1, 1, uptime_s=1), state("dev-a", 1, 2, uptime_s=9))
    h = content_hash(first.message)  # type: ignore[arg-type]
    stored = {"_id": "dev-a", "state": {"k": key(first), "h": h, "updated_at": T0}}
    assert skip_reason(repeat, stored, T0 - timedelta(minutes=5)) is Skip.UNCHANGED
    assert skip_reason(repeat, stored, T0 + timedelta(seconds=1)) is None  # refresh due
    (online,) = _accepted(presence("dev-a", 1, 1))
    assert skip_reason(online, {"_id": "dev-a", "presence": {"k": key(online)}}, T0) is Skip.OLDER
