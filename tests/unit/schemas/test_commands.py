"""Built-in commands: arguments, deadlines, the status a reader sees, the paced budget."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas import commands as c
from schemas.protocol import (
    CommandResultMessage,
    CommandStatus,
    parse_backend_message,
    parse_device_message,
)
from schemas.waves import MINUTE, paced_budget

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def test_builtin_args_are_checked_and_other_names_pass_as_they_are() -> None:
    assert c.check_args("ping", {"target": "192.0.2.1"}) == c.PingArgs(target="192.0.2.1", count=3)
    assert c.check_args("reboot", {}) == c.NoArgs()
    assert c.check_args("selftest", {"anything": 1}) is None
    for name, args in (
        ("ping", {}),
        ("ping", {"target": "-rf"}),
        ("ping", {"target": "a", "count": 11}),
        ("scan", {"band": "60GHz"}),
        ("reboot", {"now": True}),
        ("logs", {"max_bytes": 0}),
    ):
        with pytest.raises(ValueError, match=r"args|target|count|band|now|max_bytes"):
            c.check_args(name, args)


def test_log_uploads_go_over_https_except_to_this_machine() -> None:
    key = c.logs_key("t1", "ap-0001", "c1")
    assert key == "logs/t1/ap-0001/c1.log"
    ok = c.LogsArgs(upload_url="https://s3.example.net/x?X-Amz-Signature=1", key=key)
    assert ok.checked_url().startswith("https://")
    assert c.LogsArgs(upload_url="http://127.0.0.1:9000/x", key=key).checked_url()
    with pytest.raises(ValueError, match="https"):
        c.LogsArgs(upload_url="http://s3.example.net/x", key=key).checked_url()
    with pytest.raises(ValueError, match="upload_url"):
        c.LogsArgs().checked_url()


def test_labels_are_bounded() -> None:
    assert c.label("reboot") == "reboot"
    assert c.label("made-up") == "other"


def test_expiry_interval_rounds_down_and_sends_nothing_in_the_last_second() -> None:
    assert c.expiry_interval(T0 + timedelta(seconds=10.9), T0) == 10
    assert c.expiry_interval(T0 + timedelta(seconds=1), T0) == 1
    assert c.expiry_interval(T0 + timedelta(seconds=0.5), T0) is None
    assert c.expiry_interval(T0 - timedelta(seconds=5), T0) is None


def test_request_carries_the_upload_url_and_round_trips_on_the_wire() -> None:
    request = c.request("c1", "logs", {"key": "logs/t/d/c1.log"}, T0, T0 + MINUTE, "https://u/x")
    assert request.args["upload_url"] == "https://u/x"
    assert c.may_run(request, T0)
    assert not c.may_run(request, T0 + MINUTE)
    _, parsed = parse_backend_message(
        "devices/ap-0001/commands/c1", request.model_dump_json().encode()
    )
    assert parsed == request


@pytest.mark.parametrize(
    ("result", "sent", "failed", "at", "expected"),
    [
        (CommandStatus.SUCCEEDED, True, False, 100, "succeeded"),
        (CommandStatus.UNKNOWN, True, False, 100, "unknown"),  # a result outlives the deadline
        (None, True, False, 100, "expired"),
        (None, False, False, 100, "expired"),
        (None, True, False, 10, "sent"),
        (None, False, False, 10, "queued"),
        (None, False, True, 10, "undeliverable"),
    ],
)
def test_status_is_computed_when_read(result, sent, failed, at, expected) -> None:
    status = c.command_status(
        expires_at=T0 + timedelta(seconds=60),
        now=T0 + timedelta(seconds=at),
        result=result,
        sent=sent,
        send_failed=failed,
    )
    assert status == expected


def _result(output: object) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "device_id": "ap-0001",
            "key": {"session": 1, "seq": 1},
            "command_id": "c1",
            "status": "succeeded",
            "output": output,
        }
    ).encode()


def test_result_output_must_be_storable() -> None:
    topic = "devices/ap-0001/commands/c1/result"
    _, good = parse_device_message(topic, _result({"a.b": [1, 2.5, {"$c": None}], "t": "x\ny"}))
    assert isinstance(good, CommandResultMessage)
    nested: object = 1
    for _ in range(8):
        nested = [nested]
    for bad in ({"n": 2**63}, {"x": nested}, {"s": "nul\x00"}, {"k" * 65: 1}):
        with pytest.raises(Exception, match="schema"):
            parse_device_message(topic, _result(bad))
    with pytest.raises(ValidationError, match="finite"):
        CommandResultMessage.model_validate(
            {
                "device_id": "ap-0001",
                "key": {"session": 1, "seq": 1},
                "command_id": "c1",
                "status": "failed",
                "output": {"x": float("nan")},
            }
        )


def test_paced_budget_spreads_sends_and_never_exceeds_the_cap_in_a_minute() -> None:
    assert paced_budget(60, [], T0) == 1
    sent = [T0]
    assert paced_budget(60, sent, T0 + timedelta(seconds=0.5)) == 0
    assert paced_budget(60, sent, T0 + timedelta(seconds=3)) == 3
    # a sender that was away for two minutes catches up only to the cap of one minute
    assert paced_budget(10, sent, T0 + timedelta(minutes=2)) == 10
    # simulate a ticking sender: in no 60-second window more than the cap
    cap, now, times = 30, T0, []
    while now < T0 + timedelta(minutes=5):
        times += [now] * paced_budget(cap, times, now)
        now += timedelta(seconds=0.7)
    for start in times:
        assert sum(1 for t in times if start <= t < start + MINUTE) <= cap
    assert len(times) >= 5 * cap - 2
