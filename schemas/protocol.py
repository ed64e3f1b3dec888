"""Device protocol v1: every MQTT payload, as frozen pydantic models.

Rules every payload follows:

- JSON object with a schema version ``v`` (an integer ≥ 1; this code speaks 1). Fields a
  newer device adds are ignored; a missing or ill-typed required field is rejected with
  the field's path and the reason.
- Each channel has a payload size limit (:data:`MAX_PAYLOAD_BYTES`), checked before
  parsing.
- Messages a device sends carry its id (``device_id``, which must equal the id in the
  topic) and an ordering key :class:`OrderKey`.

Ordering ("which of two messages is newer")
-------------------------------------------
``key = (session, seq)``, compared as a pair. ``session`` is a counter the device
increments on every new MQTT connection and keeps across reboots (a device without
storage may use its clock in milliseconds at connect time). ``seq`` starts at 1 for the
first message of a session and grows by one per message, across all channels.

The Last Will is fixed at CONNECT time, before anything of the session is sent, yet it
is delivered after all of it. It therefore carries ``seq = WILL_SEQ`` (2**53 - 1, the
largest integer every JSON parser keeps exact): newer than every message of its own
session, older than every message of the next session (``session + 1``). A device that
goes offline gracefully publishes the same offline message itself before DISCONNECT,
so both paths produce the same key and the same stored result.

The bridge stores the key it last applied per device and channel (per job for job
status) and drops anything not newer, whatever the arrival order or redelivery.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    StringConstraints,
    ValidationError,
)

from schemas.topics import DEVICE_ID_PATTERN, JOB_ID_PATTERN, Channel, Topic, TopicError, parse

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "PROTOCOL_VERSION",
    "WILL_SEQ",
    "ConfigMessage",
    "ConfigReport",
    "DeviceMessage",
    "FirmwareRef",
    "JobCommand",
    "JobState",
    "JobStatusMessage",
    "OrderKey",
    "PresenceMessage",
    "PresenceStatus",
    "RejectReason",
    "Rejected",
    "StateMessage",
    "encode",
    "parse_device_message",
    "utc_now",
]

PROTOCOL_VERSION = 1
WILL_SEQ = 2**53 - 1

MAX_PAYLOAD_BYTES: dict[Channel, int] = {
    Channel.PRESENCE: 2 * 1024,
    Channel.STATE: 32 * 1024,
    Channel.CONFIG: 128 * 1024,
    Channel.JOB: 8 * 1024,
    Channel.JOB_STATUS: 4 * 1024,
}

DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=False)

    v: int = Field(default=PROTOCOL_VERSION, ge=1, description="Schema version of the payload")


class OrderKey(BaseModel):
    """``(session, seq)``: the larger pair is the newer message (see module docs)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    session: NonNegativeInt = Field(le=WILL_SEQ)
    seq: NonNegativeInt = Field(le=WILL_SEQ)

    def as_tuple(self) -> tuple[int, int]:
        return (self.session, self.seq)

    def newer_than(self, other: OrderKey | None) -> bool:
        return other is None or self.as_tuple() > other.as_tuple()

    @classmethod
    def will(cls, session: int) -> OrderKey:
        """The key of the Last Will (and of a graceful offline) for ``session``."""
        return cls(session=session, seq=WILL_SEQ)


class _DeviceMessage(_Message):
    device_id: DeviceId
    key: OrderKey
    ts: AwareDatetime | None = Field(default=None, description="Device clock; informational")


class PresenceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class PresenceMessage(_DeviceMessage):
    """``devices/{id}/presence``, retained. Online on connect; the Last Will says offline."""

    status: PresenceStatus
    reason: ShortText | None = Field(
        default=None, description="Why offline: connection_lost (will), shutdown, reboot")


class ConfigReport(BaseModel):
    """What the device did with the last desired config it received."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: NonNegativeInt
    hash: Sha256Hex | None = None
    status: Literal["applied", "rejected"]
    error: ShortText | None = None


class StateMessage(_DeviceMessage):
    """``devices/{id}/state``: what the device runs and how it is doing."""

    firmware: Version
    hardware_model: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    config: ConfigReport | None = None
    uptime_s: NonNegativeInt = 0
    counters: dict[Annotated[str, StringConstraints(max_length=64)], int | float] = Field(
        default_factory=dict, max_length=64)

    def content(self) -> dict[str, Any]:
        """Everything but key, timestamp and uptime: equal content means nothing changed."""
        return self.model_dump(mode="json", exclude={"key", "ts", "uptime_s", "v"})


class JobState(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.REJECTED)


class JobStatusMessage(_DeviceMessage):
    """``devices/{id}/jobs/{job_id}/status``: progress of one upgrade job."""

    job_id: JobId
    status: JobState
    progress: float | None = Field(default=None, ge=0, le=100)
    reason: ShortText | None = None
    firmware: Version | None = Field(default=None, description="Running version, when known")


class FirmwareRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: Version
    size: Annotated[int, Field(gt=0)]
    sha256: Sha256Hex
    url: Annotated[str, StringConstraints(max_length=4096, pattern=r"^https?://")]
    url_expires_at: AwareDatetime


class JobCommand(_Message):
    """``devices/{id}/jobs/{job_id}`` (backend → device): upgrade to this firmware.

    Published with QoS 1 and an MQTT message expiry equal to the URL's lifetime, so a
    device that comes back after the URL expired never sees a dead command.
    """

    job_id: JobId
    execution: NonNegativeInt = Field(default=1, description="Attempt number of this job")
    firmware: FirmwareRef
    issued_at: AwareDatetime


class ConfigMessage(_Message):
    """``devices/{id}/config``, retained (backend → device): the desired configuration."""

    version: Annotated[int, Field(ge=1)]
    hash: Sha256Hex
    issued_at: AwareDatetime
    config: dict[str, Any]


DeviceMessage = PresenceMessage | StateMessage | JobStatusMessage

_MODELS: dict[Channel, type[PresenceMessage | StateMessage | JobStatusMessage]] = {
    Channel.PRESENCE: PresenceMessage,
    Channel.STATE: StateMessage,
    Channel.JOB_STATUS: JobStatusMessage,
}


class RejectReason(StrEnum):
    """Why a device message was refused; used as a metric label, so keep it closed."""

    TOPIC = "bad_topic"
    NOT_FROM_DEVICE = "wrong_direction"
    TOO_LARGE = "too_large"
    JSON = "invalid_json"
    SCHEMA = "schema"
    ID_MISMATCH = "id_mismatch"
    UNKNOWN_DEVICE = "unknown_device"


class Rejected(Exception):
    """A device message that cannot be accepted, with a closed reason and a detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def _schema_detail(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def parse_device_message(topic: str, payload: bytes) -> tuple[Topic, DeviceMessage]:
    """Validate one message a device sent; raise :class:`Rejected` with the reason."""
    try:
        where = parse(topic)
    except TopicError as exc:
        raise Rejected(RejectReason.TOPIC, str(exc)) from None
    model = _MODELS.get(where.channel)
    if model is None:
        raise Rejected(RejectReason.NOT_FROM_DEVICE, f"{where.channel} is sent by the backend")
    limit = MAX_PAYLOAD_BYTES[where.channel]
    if len(payload) > limit:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {limit}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(RejectReason.JSON, str(exc)[:200]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise Rejected(RejectReason.SCHEMA, f"payload must be a JSON object, got {kind}")
    try:
        message = model.model_validate(data)
    except ValidationError as exc:
        raise Rejected(RejectReason.SCHEMA, _schema_detail(exc)) from None
    if message.device_id != where.device_id:
        raise Rejected(RejectReason.ID_MISMATCH,
                       f"topic says {where.device_id!r}, payload says {message.device_id!r}")
    if isinstance(message, JobStatusMessage) and message.job_id != where.job_id:
        raise Rejected(RejectReason.ID_MISMATCH,
                       f"topic job {where.job_id!r}, payload job {message.job_id!r}")
    return where, message


def encode(message: BaseModel) -> bytes:
    """The wire form of a payload: compact JSON, UTF-8."""
    return message.model_dump_json(exclude_none=True).encode()


def utc_now() -> datetime:
    return datetime.now(UTC)
