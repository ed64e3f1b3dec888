"""The MQTT topic tree. Only this module formats or parses topic strings.

    devices/{id}/presence                device → backend, retained
    devices/{id}/state                   device → backend
    devices/{id}/config                  backend → device, retained
    devices/{id}/jobs/{job_id}           backend → device
    devices/{id}/jobs/{job_id}/status    device → backend
    provision/{claim_id}/request         device (claim account) → api
    provision/{claim_id}/reply/{token}   api → the requesting device
    devices/{id}/commands/{command_id}          backend → device (MQTT v5 request)
    devices/{id}/commands/{command_id}/result   device → backend (its response)

A device id is its MQTT client id and username: ``[a-z0-9][a-z0-9-]{2,63}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from schemas.errors import SchemaError

__all__ = [
    "CLAIM_ID_PATTERN",
    "COMMAND_ID_PATTERN",
    "DEVICE_ID_PATTERN",
    "JOB_ID_PATTERN",
    "REPLY_TOKEN_PATTERN",
    "Channel",
    "Topic",
    "TopicError",
    "channel_filter",
    "claim_reply_filter",
    "device_subscriptions",
    "is_claim_id",
    "is_device_id",
    "is_reply_topic_of",
    "numbered_device_id",
    "parse",
    "parse_provision_request",
    "provision_reply_topic",
    "provision_request_topic",
    "provision_requests",
    "subscription",
    "topic",
]

DEVICE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{2,63}$"
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
COMMAND_ID_PATTERN = JOB_ID_PATTERN
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
ROOT = "devices"


class TopicError(SchemaError):
    """A topic string that is not part of the tree (or has an invalid id)."""


class Channel(StrEnum):
    PRESENCE = "presence"
    STATE = "state"
    CONFIG = "config"
    JOB = "job"
    JOB_STATUS = "job_status"
    COMMAND = "command"
    COMMAND_RESULT = "command_result"

    @property
    def from_device(self) -> bool:
        return self in (
            Channel.PRESENCE,
            Channel.STATE,
            Channel.JOB_STATUS,
            Channel.COMMAND_RESULT,
        )

    @property
    def has_id(self) -> bool:
        """Whether the topic names a job or command (``job_id`` of :class:`Topic`)."""
        return self in _WITH_ID


_WITH_ID = (Channel.JOB, Channel.JOB_STATUS, Channel.COMMAND, Channel.COMMAND_RESULT)
_PLURAL = {
    Channel.JOB: "jobs",
    Channel.JOB_STATUS: "jobs",
    Channel.COMMAND: "commands",
    Channel.COMMAND_RESULT: "commands",
}
_LAST = {Channel.JOB_STATUS: "status", Channel.COMMAND_RESULT: "result"}


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed topic; ``job_id`` is the job's id, or the command's on command channels."""

    channel: Channel
    device_id: str
    job_id: str | None = None

    def __post_init__(self) -> None:
        topic(self.channel, self.device_id, self.job_id)  # validates; TopicError otherwise

    @property
    def command_id(self) -> str | None:
        return self.job_id if self.channel in (Channel.COMMAND, Channel.COMMAND_RESULT) else None

    def __str__(self) -> str:
        return topic(self.channel, self.device_id, self.job_id)


def is_device_id(value: str) -> bool:
    return _DEVICE_ID.fullmatch(value) is not None


def numbered_device_id(prefix: str, index: int) -> str:
    """``<prefix>-000042``: the ids of a numbered fleet (the simulator, the demo)."""
    return f"{prefix}-{index:06d}"


def topic(channel: Channel, device_id: str, job_id: str | None = None) -> str:
    """Build the topic of ``channel`` for one device (and job)."""
    if not is_device_id(device_id):
        raise TopicError(f"invalid device id {device_id!r}")
    if channel.has_id:
        if job_id is None or not _JOB_ID.fullmatch(job_id):
            raise TopicError(f"invalid {_PLURAL[channel][:-1]} id {job_id!r}")
        suffix = f"/{_LAST[channel]}" if channel in _LAST else ""
        return f"{ROOT}/{device_id}/{_PLURAL[channel]}/{job_id}{suffix}"
    if job_id is not None:
        raise TopicError(f"{channel} topics carry no job id")
    return f"{ROOT}/{device_id}/{channel.value}"


def parse(value: str) -> Topic:
    """Parse a concrete topic into channel, device id and job id; TopicError otherwise."""
    parts = value.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise TopicError(f"not a device topic: {value[:200]!r}")
    device_id = parts[1]
    if not is_device_id(device_id):
        raise TopicError(f"invalid device id in topic: {device_id[:80]!r}")
    rest = parts[2:]
    if rest in (["presence"], ["state"], ["config"]):
        return Topic(Channel(rest[0]), device_id)
    if len(rest) in (2, 3) and rest[0] in ("jobs", "commands") and rest[-1] != "":
        job_id = rest[1]
        if not _JOB_ID.fullmatch(job_id):
            raise TopicError(f"invalid {rest[0][:-1]} id in topic: {job_id[:80]!r}")
        jobs = rest[0] == "jobs"
        if len(rest) == 2:
            return Topic(Channel.JOB if jobs else Channel.COMMAND, device_id, job_id)
        if rest[2] == ("status" if jobs else "result"):
            return Topic(Channel.JOB_STATUS if jobs else Channel.COMMAND_RESULT, device_id, job_id)
    raise TopicError(f"unknown device topic: {value[:200]!r}")


def channel_filter(channel: Channel, device_id: str = "+") -> str:
    """The filter of ``channel`` for one device, or for all (``+``): jobs and commands of
    any id."""
    if device_id != "+" and not is_device_id(device_id):
        raise TopicError(f"invalid device id {device_id!r}")
    suffix = {
        Channel.PRESENCE: "presence",
        Channel.STATE: "state",
        Channel.CONFIG: "config",
        Channel.JOB: "jobs/+",
        Channel.JOB_STATUS: "jobs/+/status",
        Channel.COMMAND: "commands/+",
        Channel.COMMAND_RESULT: "commands/+/result",
    }[channel]
    return f"{ROOT}/{device_id}/{suffix}"


def subscription(channel: Channel, share_group: str | None = None) -> str:
    """The wildcard filter for ``channel`` across all devices, optionally shared.

    With ``share_group`` several subscribers of one group split the messages
    (MQTT v5 shared subscription ``$share/<group>/<filter>``).
    """
    base = channel_filter(channel)
    return f"$share/{share_group}/{base}" if share_group else base


def device_subscriptions(device_id: str) -> list[str]:
    """What a device subscribes to, and all it may subscribe to: its backend channels."""
    return [channel_filter(c, device_id) for c in Channel if not c.from_device]


# -- provisioning (zero-touch) -------------------------------------------------------------
#
#     provision/{claim_id}/request          device (claim account) → api, never retained
#     provision/{claim_id}/reply/{token}    api → that device, never retained
#
# A claim account may publish only its claim's request topic and subscribe only to reply
# topics of its claim (docs/protocol.md, "Zero-touch provisioning").

PROVISION_ROOT = "provision"
CLAIM_ID_PATTERN = r"^[0-9a-f]{12}$"
REPLY_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{22,64}$"
_CLAIM_ID = re.compile(CLAIM_ID_PATTERN)
_REPLY_TOKEN = re.compile(REPLY_TOKEN_PATTERN)


def is_claim_id(value: str) -> bool:
    return _CLAIM_ID.fullmatch(value) is not None


def provision_request_topic(claim_id: str) -> str:
    """Where a device holding claim ``claim_id`` asks for its identity."""
    if not is_claim_id(claim_id):
        raise TopicError(f"invalid claim id {claim_id!r}")
    return f"{PROVISION_ROOT}/{claim_id}/request"


def provision_reply_topic(claim_id: str, token: str) -> str:
    """The per-request reply topic; ``token`` is the requester's random choice."""
    if not _REPLY_TOKEN.fullmatch(token):
        raise TopicError(f"invalid reply token {token[:80]!r}")
    return f"{provision_request_topic(claim_id).removesuffix('/request')}/reply/{token}"


def provision_requests(share_group: str | None = None) -> str:
    """The filter of every claim's requests, optionally shared between api instances."""
    base = f"{PROVISION_ROOT}/+/request"
    return f"$share/{share_group}/{base}" if share_group else base


def parse_provision_request(value: str) -> str:
    """The claim id of a request topic; TopicError for anything else."""
    parts = value.split("/")
    if len(parts) != 3 or parts[0] != PROVISION_ROOT or parts[2] != "request":
        raise TopicError(f"not a provisioning request topic: {value[:200]!r}")
    if not is_claim_id(parts[1]):
        raise TopicError(f"invalid claim id in topic: {parts[1][:80]!r}")
    return parts[1]


def is_reply_topic_of(value: str, claim_id: str) -> bool:
    """Whether ``value`` is a reply topic of ``claim_id`` (what a request may name)."""
    parts = value.split("/")
    return (
        len(parts) == 4
        and parts[0] == PROVISION_ROOT
        and parts[1] == claim_id
        and parts[2] == "reply"
        and _REPLY_TOKEN.fullmatch(parts[3]) is not None
    )


def claim_reply_filter(claim_id: str) -> str:
    """What a claim account may subscribe to: the reply topics of its claim."""
    return provision_reply_topic(claim_id, "x" * 22).rsplit("/", 1)[0] + "/+"
