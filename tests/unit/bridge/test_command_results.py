"""Which command results the bridge keeps: the first, in time, for a command of this
device; never a retained one."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bridge import command_results as cr
from bridge.decode import Accepted, decode
from schemas.protocol import RejectReason
from tests.unit.bridge.helpers import inbound


def result(device: str, command_id: str, seq: int = 1, *, retain: bool = False) -> Accepted:
    body = {
        "v": 1,
        "device_id": device,
        "key": {"session": 1, "seq": seq},
        "command_id": command_id,
        "status": "succeeded",
        "output": {"a.b": 1},
    }
    decoded = decode(inbound(f"devices/{device}/commands/{command_id}/result", body, retain=retain))
    assert isinstance(decoded, Accepted)
    return decoded


def facts(device: str = "ap-0001", expires_in: float = 60) -> cr.CommandFacts:
    return cr.CommandFacts(device, "t1", "ping", datetime.now(UTC) + timedelta(seconds=expires_in))


def test_a_result_for_this_devices_command_in_time_is_kept() -> None:
    assert cr.is_result(result("ap-0001", "c1"))
    assert cr.judge(result("ap-0001", "c1"), facts()) is None


def test_refusals() -> None:
    assert cr.judge(result("ap-0001", "c1"), None)[0] is RejectReason.UNKNOWN_COMMAND
    other = cr.judge(result("ap-0002", "c1"), facts("ap-0001"))
    assert other is not None
    assert other[0] is RejectReason.UNKNOWN_COMMAND
    assert cr.judge(result("ap-0001", "c1"), facts(expires_in=-1))[0] is (
        RejectReason.EXPIRED_COMMAND
    )
    assert cr.judge(result("ap-0001", "c1", retain=True), facts())[0] is RejectReason.RETAINED


def test_within_a_batch_the_first_answer_wins() -> None:
    first, again, stranger = (
        result("ap-0001", "c1", 1),
        result("ap-0001", "c1", 2),
        result("ap-0009", "c1", 1),
    )
    judged = cr.judge_all([first, again, stranger], {"c1": facts()})
    assert [item for item, _ in judged.store] == [first]
    assert judged.duplicates == 1
    assert [r.reason for r in judged.rejections] == [RejectReason.UNKNOWN_COMMAND]


def test_the_stored_document() -> None:
    item = replace(result("ap-0001", "c1", 7), epoch=2)
    doc = cr.insert_op(item, facts()).document
    assert doc["_id"] == "c1"
    assert doc["tenant_id"] == "t1"
    assert doc["name"] == "ping"
    assert json.loads(doc["output"]) == {"a.b": 1}  # JSON text: any key is storable
    assert doc["k"].startswith("000002:")
    assert cr.labels([(item, facts())]) == [("ping", "succeeded")]
    naive = cr.CommandFacts.from_doc(
        {"device_id": "ap-0001", "name": "x", "expires_at": datetime(2026, 1, 1)}
    )
    assert naive.expires_at.tzinfo is UTC
    assert naive.tenant_id is None
