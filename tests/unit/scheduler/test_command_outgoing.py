"""The request the scheduler publishes for a group command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from scheduler.commands import outgoing
from schemas.documents import CommandDoc

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


def doc(expires_in: float) -> CommandDoc:
    return CommandDoc(
        id="6566f0a1c2d3e4f5a6b7c8d9",
        tenant_id="t1",
        device_id="ap-0001",
        name="logs",
        args={"key": "logs/t1/ap-0001/6566f0a1c2d3e4f5a6b7c8d9.log"},
        created_at=T0,
        expires_at=T0 + timedelta(seconds=expires_in),
        bulk_id="b1",
        logs_key="logs/t1/ap-0001/6566f0a1c2d3e4f5a6b7c8d9.log",
    )


def test_a_request_with_response_topic_correlation_and_expiry() -> None:
    message = outgoing(doc(90.5), T0, "https://s3.example.net/put")
    assert message is not None
    assert message.topic == "devices/ap-0001/commands/6566f0a1c2d3e4f5a6b7c8d9"
    assert message.response_topic == message.topic + "/result"
    assert message.correlation == b"6566f0a1c2d3e4f5a6b7c8d9"
    assert message.expiry_s == 90
    assert not message.retain
    body = json.loads(message.payload)
    assert body["args"]["upload_url"] == "https://s3.example.net/put"


def test_nothing_once_expired() -> None:
    assert outgoing(doc(0.5), T0, None) is None
