"""Every payload: accepted, tolerated extras, precise rejects, size limits, id checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from schemas.examples import DEVICE_ID, EXAMPLES, JOB_ID, example_wifi_config
from schemas.protocol import (
    MAX_PAYLOAD_BYTES,
    ConfigMessage,
    JobCommand,
    JobStatusMessage,
    PresenceMessage,
    Rejected,
    RejectReason,
    StateMessage,
    encode,
    parse_backend_message,
    parse_device_message,
)
from schemas.topics import Channel, topic
from schemas.wifi import config_hash, validate_config

DEVICE_CHANNELS = [Channel.PRESENCE, Channel.STATE, Channel.JOB_STATUS]
BACKEND_CHANNELS = [Channel.CONFIG, Channel.JOB]


def sample(channel: Channel) -> tuple[str, dict[str, Any]]:
    where, payload = EXAMPLES[channel]
    return where, copy.deepcopy(payload)


def parse_any(channel: Channel, where: str, payload: bytes) -> Any:
    parser = parse_device_message if channel.from_device else parse_backend_message
    return parser(where, payload)[1]


def reject(channel: Channel, where: str, payload: bytes) -> Rejected:
    with pytest.raises(Rejected) as info:
        parse_any(channel, where, payload)
    return info.value


def as_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()


@pytest.mark.parametrize("channel", list(Channel))
def test_example_is_accepted_and_round_trips(channel: Channel) -> None:
    where, payload = sample(channel)
    message = parse_any(channel, where, as_bytes(payload))
    assert (
        type(message).__name__
        == {
            Channel.PRESENCE: "PresenceMessage",
            Channel.STATE: "StateMessage",
            Channel.CONFIG: "ConfigMessage",
            Channel.JOB: "JobCommand",
            Channel.JOB_STATUS: "JobStatusMessage",
            Channel.COMMAND: "CommandRequest",
            Channel.COMMAND_RESULT: "CommandResultMessage",
        }[channel]
    )
    assert parse_any(channel, where, encode(message)) == message


@pytest.mark.parametrize("channel", list(Channel))
def test_unknown_extra_fields_are_tolerated(channel: Channel) -> None:
    where, payload = sample(channel)
    payload["added_in_v2"] = {"anything": [1, 2]}
    payload["v"] = 2
    message = parse_any(channel, where, as_bytes(payload))
    assert message.v == 2
    assert "added_in_v2" not in message.model_dump()


REQUIRED = {
    Channel.PRESENCE: ["device_id", "key", "status"],
    Channel.STATE: ["device_id", "key", "firmware", "hardware_model"],
    Channel.CONFIG: ["version", "hash", "issued_at", "config"],
    Channel.JOB: ["job_id", "firmware", "issued_at"],
    Channel.JOB_STATUS: ["device_id", "key", "job_id", "status"],
}


@pytest.mark.parametrize(
    ("channel", "field"), [(c, f) for c, fields in REQUIRED.items() for f in fields]
)
def test_missing_required_field_is_rejected_with_its_path(channel: Channel, field: str) -> None:
    where, payload = sample(channel)
    del payload[field]
    error = reject(channel, where, as_bytes(payload))
    assert error.reason is RejectReason.SCHEMA
    assert f"{field}: Field required" in error.detail


@pytest.mark.parametrize(
    ("channel", "path", "value", "expected"),
    [
        (Channel.PRESENCE, ["status"], "sleeping", "status: Input should be 'online' or 'offline'"),
        (Channel.PRESENCE, ["key", "seq"], "x", "key.seq: Input should be a valid integer"),
        (Channel.PRESENCE, ["key", "session"], -1, "key.session: Input should be greater than"),
        (Channel.PRESENCE, ["key", "seq"], 2**53, "key.seq: Input should be less than or equal"),
        (Channel.PRESENCE, ["v"], 0, "v: Input should be greater than or equal to 1"),
        (Channel.PRESENCE, ["ts"], "2026-11-26T09:00:00", "ts: Input should have timezone info"),
        (Channel.STATE, ["uptime_s"], -5, "uptime_s: Input should be greater than or equal to 0"),
        (Channel.STATE, ["config", "status"], "maybe", "config.status: Input should be"),
        (Channel.STATE, ["config", "hash"], "ABC", "config.hash: String should match pattern"),
        (Channel.STATE, ["counters", "clients"], "many", "counters.clients.int:"),
        (Channel.STATE, ["firmware"], "", "firmware: String should have at least 1 character"),
        (Channel.JOB_STATUS, ["progress"], 101, "progress: Input should be less than or equal"),
        (Channel.JOB_STATUS, ["status"], "done", "status: Input should be 'queued'"),
        (Channel.JOB, ["firmware", "size"], 0, "firmware.size: Input should be greater than 0"),
        (Channel.JOB, ["firmware", "url"], "ftp://x", "firmware.url: String should match pattern"),
        (Channel.JOB, ["firmware", "sha256"], "0" * 63, "firmware.sha256: String should match"),
        (Channel.CONFIG, ["version"], 0, "version: Input should be greater than or equal to 1"),
        (
            Channel.CONFIG,
            ["config", "radios", "5GHz", "channel"],
            14,
            "config.radios.5GHz.channel: channel 14 is not allowed on 5GHz in DE",
        ),
    ],
)
def test_ill_typed_field_is_rejected_with_its_path(
    channel: Channel, path: list[str], value: Any, expected: str
) -> None:
    where, payload = sample(channel)
    target = payload
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    error = reject(channel, where, as_bytes(payload))
    assert error.reason is RejectReason.SCHEMA
    assert expected in error.detail, error.detail


@pytest.mark.parametrize("channel", list(Channel))
def test_oversized_payload_is_rejected_before_parsing(channel: Channel) -> None:
    where, payload = sample(channel)
    limit = MAX_PAYLOAD_BYTES[channel]
    payload["padding"] = "x" * limit
    error = reject(channel, where, as_bytes(payload))
    assert error.reason is RejectReason.TOO_LARGE
    assert f"> {limit}" in error.detail


def test_payload_at_the_limit_is_accepted() -> None:
    where, payload = sample(Channel.PRESENCE)
    payload["padding"] = ""
    room = MAX_PAYLOAD_BYTES[Channel.PRESENCE] - len(as_bytes(payload))
    payload["padding"] = "x" * room
    assert len(as_bytes(payload)) == MAX_PAYLOAD_BYTES[Channel.PRESENCE]
    parse_device_message(where, as_bytes(payload))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", RejectReason.JSON),
        (b"{not json", RejectReason.JSON),
        (b"\xff\xfe{}", RejectReason.JSON),
        (b"[" * 1020 + b"]" * 1020, RejectReason.JSON),
        (b"[]", RejectReason.SCHEMA),
        (b"null", RejectReason.SCHEMA),
        (b'"online"', RejectReason.SCHEMA),
    ],
)
def test_not_a_json_object_is_rejected(raw: bytes, reason: RejectReason) -> None:
    error = reject(Channel.PRESENCE, topic(Channel.PRESENCE, DEVICE_ID), raw)
    assert error.reason is reason


def test_device_id_mismatch_between_topic_and_payload() -> None:
    _, payload = sample(Channel.STATE)
    error = reject(Channel.STATE, topic(Channel.STATE, "ap-other-1"), as_bytes(payload))
    assert error.reason is RejectReason.ID_MISMATCH
    assert "'ap-other-1'" in error.detail
    assert f"'{DEVICE_ID}'" in error.detail


def test_job_id_mismatch_between_topic_and_payload() -> None:
    _, payload = sample(Channel.JOB_STATUS)
    where = topic(Channel.JOB_STATUS, DEVICE_ID, "other-job")
    assert reject(Channel.JOB_STATUS, where, as_bytes(payload)).reason is RejectReason.ID_MISMATCH
    _, command = sample(Channel.JOB)
    where = topic(Channel.JOB, DEVICE_ID, "other-job")
    assert reject(Channel.JOB, where, as_bytes(command)).reason is RejectReason.ID_MISMATCH


def test_bad_topic_and_wrong_direction() -> None:
    _, payload = sample(Channel.PRESENCE)
    with pytest.raises(Rejected) as info:
        parse_device_message("devices/ap-0001/nonsense", as_bytes(payload))
    assert info.value.reason is RejectReason.TOPIC
    config_topic, config = sample(Channel.CONFIG)
    with pytest.raises(Rejected) as info:
        parse_device_message(config_topic, as_bytes(config))
    assert info.value.reason is RejectReason.NOT_FROM_DEVICE
    with pytest.raises(Rejected) as info:
        parse_backend_message(topic(Channel.PRESENCE, DEVICE_ID), as_bytes(payload))
    assert info.value.reason is RejectReason.NOT_FROM_DEVICE


def test_config_hash_must_match_the_config() -> None:
    where, payload = sample(Channel.CONFIG)
    payload["hash"] = "0" * 64
    error = reject(Channel.CONFIG, where, as_bytes(payload))
    assert error.reason is RejectReason.SCHEMA
    expected = config_hash(example_wifi_config())
    assert error.detail == f"hash: does not match the config (its hash is {expected})"


def test_config_changed_without_new_hash_is_rejected() -> None:
    where, payload = sample(Channel.CONFIG)
    payload["config"]["ssids"][0]["hidden"] = True
    assert reject(Channel.CONFIG, where, as_bytes(payload)).detail.startswith("hash:")


def test_config_rejects_unknown_config_fields() -> None:
    """Unlike envelopes, a config a device only half understands must not be applied."""
    where, payload = sample(Channel.CONFIG)
    payload["config"]["mesh"] = {"enabled": True}
    error = reject(Channel.CONFIG, where, as_bytes(payload))
    assert "config.mesh: Extra inputs are not permitted" in error.detail


def test_config_message_for_config_fills_the_hash() -> None:
    message = ConfigMessage.for_config(example_wifi_config(), version=7)
    assert message.hash == config_hash(message.config)
    assert message.issued_at.tzinfo is not None
    _, parsed = parse_backend_message(topic(Channel.CONFIG, DEVICE_ID), encode(message))
    assert parsed == message


def test_models_are_frozen() -> None:
    _, payload = sample(Channel.PRESENCE)
    message = PresenceMessage.model_validate(payload)
    with pytest.raises(ValueError, match="frozen"):
        message.status = "online"  # type: ignore[assignment]


def test_state_content_ignores_key_time_and_uptime() -> None:
    _, payload = sample(Channel.STATE)
    a = StateMessage.model_validate(payload)
    payload.update(key={"session": 99, "seq": 1}, uptime_s=10_000, ts="2027-01-01T00:00:00Z")
    b = StateMessage.model_validate(payload)
    assert a.content() == b.content()
    payload["firmware"] = "7.3.0"
    assert StateMessage.model_validate(payload).content() != a.content()


def test_job_state_terminal() -> None:
    _, payload = sample(Channel.JOB_STATUS)
    assert not JobStatusMessage.model_validate(payload).status.terminal
    terminal = {s for s in JobStatusMessage.model_fields["status"].annotation if s.terminal}  # type: ignore[union-attr]
    assert {s.value for s in terminal} == {"succeeded", "failed", "rejected"}
    assert JobCommand.model_validate(sample(Channel.JOB)[1]).job_id == JOB_ID


def test_exceptions_share_one_base() -> None:
    from schemas.errors import SchemaError
    from schemas.topics import TopicError
    from schemas.wifi import InvalidConfig

    assert all(issubclass(e, SchemaError) for e in (Rejected, TopicError, InvalidConfig))
    error = Rejected(RejectReason.TOO_LARGE, "3000 bytes > 2048")
    assert str(error) == "too_large: 3000 bytes > 2048"


def test_the_largest_valid_config_fits_the_config_payload_limit() -> None:
    """Every limit of WifiConfig at its maximum, with worst-case JSON escaping."""
    host = ".".join(["h" * 63] * 3) + "." + "d" * 61  # 253 characters
    radius = [{"host": host, "port": 65535, "secret": '"' * 128}] * 4
    ssids = [
        {
            "name": f"{i:02d}" + '"' * 30,
            "bands": ["2.4GHz", "5GHz"],
            "vlan": 4094,
            "hidden": True,
            "security": {"mode": "wpa2-enterprise", "radius": radius},
        }
        for i in range(32)
    ]
    wifi = {
        "country": "DE",
        "radios": {
            b: {"channel": "auto", "width": 20, "tx_power_dbm": 30}
            for b in ("2.4GHz", "5GHz", "6GHz")
        },
        "ssids": ssids,
        "management_vlan": 4094,
        "ntp_servers": [f"{i}{host[1:]}" for i in range(4)],
        "syslog": {"host": host, "port": 65535, "protocol": "tls"},
    }
    message = ConfigMessage.for_config(validate_config(wifi), version=2**53 - 1)
    size = len(encode(message))
    assert 60_000 < size <= MAX_PAYLOAD_BYTES[Channel.CONFIG]
