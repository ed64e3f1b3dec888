from __future__ import annotations

from bridge.batch import coalesce, plan, with_known
from bridge.decode import Accepted, Rejection, decode
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
    decoded = plan(batch)
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


def test_unknown_devices_are_rejected_and_the_rest_coalesced():
    decoded = plan([state("dev-a", 1, 1), state("dev-a", 1, 2), state("ghost-1", 1, 1)])
    planned = with_known(decoded, {"dev-a"})
    assert [w.message.key.seq for w in planned.writes] == [2]
    assert len(planned.rejections) == 1
    rejection = planned.rejections[0]
    assert isinstance(rejection, Rejection)
    assert rejection.reason is RejectReason.UNKNOWN_DEVICE


def test_needed_skips_what_the_stored_document_already_has():
    from bridge.batch import content_hash, needed

    newer = decode(state("dev-a", 1, 5, n=1))
    assert isinstance(newer, Accepted)
    h = content_hash(newer.message)  # type: ignore[arg-type]
    assert needed(newer, {"_id": "dev-a"})
    assert not needed(newer, None)  # no document: never created
    assert needed(newer, {"state": {"k": "00000000000001.00000000000004", "h": "other"}})
    assert not needed(newer, {"state": {"k": "00000000000001.00000000000005", "h": "x"}})
    assert not needed(newer, {"state": {"k": "00000000000001.00000000000004", "h": h}})
    online = decode(presence("dev-a", 2, 1))
    assert isinstance(online, Accepted)
    assert needed(online, {"state": {"k": "00000000000009.00000000000001"}})
    assert not needed(online, {"presence": {"k": "00000000000002.00000000000001"}})
