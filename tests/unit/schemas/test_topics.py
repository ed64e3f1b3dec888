"""Topic tree: build/parse round-trip and rejects."""

from __future__ import annotations

import pytest

from schemas.topics import (
    Channel,
    Topic,
    TopicError,
    channel_filter,
    device_subscriptions,
    parse,
    subscription,
    topic,
)

CASES = [
    (Channel.PRESENCE, None, "devices/ap-0001/presence"),
    (Channel.STATE, None, "devices/ap-0001/state"),
    (Channel.CONFIG, None, "devices/ap-0001/config"),
    (Channel.JOB, "job_1", "devices/ap-0001/jobs/job_1"),
    (Channel.JOB_STATUS, "job_1", "devices/ap-0001/jobs/job_1/status"),
    (Channel.COMMAND, "c1", "devices/ap-0001/commands/c1"),
    (Channel.COMMAND_RESULT, "c1", "devices/ap-0001/commands/c1/result"),
]


@pytest.mark.parametrize(("channel", "job_id", "expected"), CASES)
def test_build_and_parse_round_trip(channel: Channel, job_id: str | None, expected: str) -> None:
    built = topic(channel, "ap-0001", job_id)
    assert built == expected
    parsed = parse(built)
    assert parsed == Topic(channel, "ap-0001", job_id)
    assert str(parsed) == built


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "devices",
        "devices/ap-0001",
        "devices/ap-0001/",
        "devices/ap-0001/unknown",
        "things/ap-0001/state",
        "devices/AP-0001/state",
        "devices/ab/state",
        "devices/-ap-0001/state",
        "devices/+/state",
        "devices/#",
        "devices/ap-0001/state/x",
        "devices/ap-0001/jobs",
        "devices/ap-0001/jobs/",
        "devices/ap-0001/jobs/j1/",
        "devices/ap-0001/jobs/j1/progress",
        "devices/ap-0001/jobs/j+1/status",
        "devices/ap-0001/jobs/j1/status/x",
        "devices/ap-0001/commands",
        "devices/ap-0001/commands/c1/status",
        "devices/ap-0001/jobs/j1/result",
        "devices/ap-0001/commands/c+1/result",
        "$share/g/devices/ap-0001/state",
        "/devices/ap-0001/state",
        "devices/" + "a" * 65 + "/state",
    ],
)
def test_parse_rejects(bad: str) -> None:
    with pytest.raises(TopicError):
        parse(bad)


@pytest.mark.parametrize(
    ("channel", "device_id", "job_id"),
    [
        (Channel.STATE, "AP", None),
        (Channel.STATE, "ap-0001/x", None),
        (Channel.STATE, "ap-0001", "j1"),
        (Channel.JOB, "ap-0001", None),
        (Channel.JOB_STATUS, "ap-0001", "bad/job"),
        (Channel.JOB, "ap-0001", "#"),
    ],
)
def test_build_rejects(channel: Channel, device_id: str, job_id: str | None) -> None:
    with pytest.raises(TopicError):
        topic(channel, device_id, job_id)
    with pytest.raises(TopicError):
        Topic(channel, device_id, job_id)


def test_subscriptions_and_acl_filter() -> None:
    assert subscription(Channel.JOB_STATUS) == "devices/+/jobs/+/status"
    assert subscription(Channel.PRESENCE, "bridge") == "$share/bridge/devices/+/presence"
    assert channel_filter(Channel.JOB_STATUS, "ap-0001") == "devices/ap-0001/jobs/+/status"
    assert channel_filter(Channel.COMMAND_RESULT) == "devices/+/commands/+/result"
    assert device_subscriptions("ap-0001") == [
        "devices/ap-0001/config",
        "devices/ap-0001/jobs/+",
        "devices/ap-0001/commands/+",
    ]
    with pytest.raises(TopicError):
        channel_filter(Channel.STATE, "#")


def test_direction() -> None:
    assert {c for c in Channel if c.from_device} == {
        Channel.PRESENCE,
        Channel.STATE,
        Channel.JOB_STATUS,
        Channel.COMMAND_RESULT,
    }
