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

Desired config
--------------
:class:`ConfigMessage` carries a :class:`~schemas.wifi.WifiConfig` and its
:func:`~schemas.wifi.config_hash`; a message whose hash does not match its config is
rejected, so a device can trust ``hash`` as the identity of what it applies. Build one
with :meth:`ConfigMessage.for_config`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from schemas.errors import SchemaError
from schemas.firmware import FirmwareManifest
from schemas.topics import (
    COMMAND_ID_PATTERN,
    DEVICE_ID_PATTERN,
    JOB_ID_PATTERN,
    Channel,
    Topic,
    TopicError,
    parse,
)
from schemas.wifi import WifiConfig, config_hash

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MODELS",
    "PROTOCOL_VERSION",
    "WILL_SEQ",
    "BackendMessage",
    "CommandRequest",
    "CommandResultMessage",
    "CommandStatus",
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
    "is_loopback",
    "parse_backend_message",
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
    Channel.COMMAND: 8 * 1024,
    Channel.COMMAND_RESULT: 16 * 1024,
}

# Every value a device sends must be storable as it is, in MongoDB and in FerretDB on
# PostgreSQL: integers within BSON's signed 64 bits, finite floats (no NaN/Infinity,
# which JSONB refuses), no control characters in text (PostgreSQL's text refuses NUL),
# and document keys that are plain names (MongoDB refuses "$" at the start, "." means a
# path, NUL ends a key). A payload outside these bounds is rejected at decode, with the
# field and the reason, never sent to the database.
INT64_MAX = 2**63 - 1
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
PLAIN_TEXT = r"^[^\x00-\x1f\x7f]*$"
COUNTER_KEY = r"^[A-Za-z0-9_-]{1,64}$"
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
JobId = Annotated[str, StringConstraints(pattern=JOB_ID_PATTERN)]
ShortText = Annotated[str, StringConstraints(max_length=1024, pattern=PLAIN_TEXT)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PLAIN_TEXT)]
CounterKey = Annotated[str, StringConstraints(pattern=COUNTER_KEY)]


def _storable_number(value: Any) -> Any:
    """An integer out of signed 64 bits is refused, not silently turned into a float."""
    in_range = -(2**63) <= value <= INT64_MAX if isinstance(value, int) else True
    if not in_range:
        raise ValueError("integer outside the signed 64-bit range")
    return value


CounterValue = Annotated[int | float, BeforeValidator(_storable_number)]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", strict=False, allow_inf_nan=False)

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
        default=None, description="Why offline: connection_lost (will), shutdown, reboot"
    )


class ConfigReport(BaseModel):
    """What the device did with the last desired config it received."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    version: Count
    hash: Sha256Hex | None = None
    status: Literal["applied", "rejected"]
    error: ShortText | None = None


class StateMessage(_DeviceMessage):
    """``devices/{id}/state``: what the device runs and how it is doing."""

    firmware: Version
    hardware_model: Annotated[
        str, StringConstraints(min_length=1, max_length=64, pattern=PLAIN_TEXT)
    ]
    config: ConfigReport | None = None
    uptime_s: Count = 0
    counters: dict[CounterKey, CounterValue] = Field(
        default_factory=dict,
        max_length=64,
        description=f"Named numbers: keys match {COUNTER_KEY}, values within signed 64 bits "
        "or finite floats",
    )

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
    progress: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    reason: ShortText | None = None
    firmware: Version | None = Field(default=None, description="Running version, when known")


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FirmwareRef(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: Version
    size: Annotated[int, Field(gt=0)]
    sha256: Sha256Hex
    url: Annotated[str, StringConstraints(max_length=4096, pattern=r"^https?://")]
    url_expires_at: AwareDatetime
    hardware_models: tuple[
        Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=PLAIN_TEXT)], ...
    ] = Field(default=(), max_length=64, description="Models the image is for (signed)")
    signature: Annotated[str, StringConstraints(max_length=128)] | None = Field(
        default=None,
        description="Ed25519 signature (base64) of the manifest: version, size, sha256 and "
        "hardware models (schemas.firmware.FirmwareManifest)",
    )

    @field_validator("url")
    @classmethod
    def _https_unless_loopback(cls, url: str) -> str:
        """Images travel over https; plain http only to this machine (the local stack)."""
        parts = urlsplit(url)
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise ValueError("firmware URLs must be https (http only for loopback hosts)")
        return url

    def manifest(self) -> FirmwareManifest:
        return FirmwareManifest(
            version=self.version,
            size=self.size,
            sha256=self.sha256,
            hardware_models=self.hardware_models,
        )


class JobCommand(_Message):
    """``devices/{id}/jobs/{job_id}`` (backend → device): upgrade to this firmware.

    Published with QoS 1 and an MQTT message expiry equal to the URL's lifetime, so a
    device that comes back after the URL expired never sees a dead command.
    """

    job_id: JobId
    execution: NonNegativeInt = Field(default=1, description="Attempt number of this job")
    firmware: FirmwareRef
    allow_downgrade: bool = Field(
        default=False, description="The rollout allows installing an older version"
    )
    issued_at: AwareDatetime


class ConfigMessage(_Message):
    """``devices/{id}/config``, retained (backend → device): the desired configuration.

    ``hash`` must equal :func:`schemas.wifi.config_hash` of ``config``; ``version`` grows
    by one with every change an admin makes to the device's effective config.
    """

    version: Annotated[int, Field(ge=1)]
    hash: Sha256Hex = Field(description="sha256 of the config's canonical JSON")
    issued_at: AwareDatetime
    config: WifiConfig

    @model_validator(mode="after")
    def _hash_matches(self) -> ConfigMessage:
        expected = config_hash(self.config)
        if self.hash != expected:
            error = PydanticCustomError(
                "hash_mismatch",
                "does not match the config (its hash is {expected})",
                {"expected": expected},
            )
            raise ValidationError.from_exception_data(
                type(self).__name__, [InitErrorDetails(type=error, loc=("hash",), input=self.hash)]
            )
        return self

    @classmethod
    def for_config(
        cls, config: WifiConfig, version: int, issued_at: datetime | None = None
    ) -> ConfigMessage:
        """The message for ``config`` with its hash filled in."""
        return cls(
            version=version,
            hash=config_hash(config),
            config=config,
            issued_at=issued_at or utc_now(),
        )


# -- device commands (MQTT v5 request/response) ---------------------------------------

CommandId = Annotated[str, StringConstraints(pattern=COMMAND_ID_PATTERN)]
COMMAND_NAME = r"^[a-z][a-z0-9_-]{0,31}$"
CommandName = Annotated[str, StringConstraints(pattern=COMMAND_NAME)]
ARG_KEY = r"^[a-z][a-z0-9_]{0,31}$"
ArgValue = (
    Annotated[str, StringConstraints(max_length=4096, pattern=PLAIN_TEXT)] | Int64 | float | bool
)
MAX_OUTPUT_DEPTH = 6


def _storable_json(value: Any, depth: int = 0) -> Any:
    """A command's output: JSON that every store keeps exactly (64-bit integers, finite
    floats, text without control characters), nested at most :data:`MAX_OUTPUT_DEPTH`."""
    if depth > MAX_OUTPUT_DEPTH:
        raise ValueError(f"nested deeper than {MAX_OUTPUT_DEPTH}")
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or len(key) > 64 or _CONTROL_CHARS.search(key):
                raise ValueError("keys are text of at most 64 characters")
        return {k: _storable_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable_json(v, depth + 1) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return _storable_number(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("floats must be finite")
        return value
    if isinstance(value, str):
        if _CONTROL_CHARS.search(value):
            raise ValueError("text must not hold control characters")
        return value
    raise ValueError(f"not JSON: {type(value).__name__}")


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
CommandOutput = Annotated[dict[str, Any], AfterValidator(_storable_json)]


class CommandRequest(_Message):
    """``devices/{id}/commands/{command_id}`` (backend → device): run one command.

    An MQTT v5 request: published with QoS 1, never retained, with the Response Topic
    ``devices/{id}/commands/{command_id}/result``, the command id as Correlation Data and
    a Message Expiry Interval that ends at ``expires_at``, so a device that comes back
    later never gets it. A device runs a command id at most once, never after
    ``expires_at`` by its own clock, and answers once with a
    :class:`CommandResultMessage`. ``args`` depend on ``name`` (:mod:`schemas.commands`).
    """

    command_id: CommandId
    name: CommandName
    args: dict[Annotated[str, StringConstraints(pattern=ARG_KEY)], ArgValue] = Field(
        default_factory=dict, max_length=16
    )
    issued_at: AwareDatetime
    expires_at: AwareDatetime


class CommandStatus(StrEnum):
    """How a command ended on the device."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # it ran and did not work (``error`` says why)
    REJECTED = "rejected"  # not run: invalid arguments, or the device refuses it
    UNKNOWN = "unknown"  # not run: the device does not know this command


class CommandResultMessage(_DeviceMessage):
    """``devices/{id}/commands/{command_id}/result`` (device → backend): the one answer.

    Sent on the request's Response Topic with its Correlation Data. ``output`` is the
    command's result (:mod:`schemas.commands`: ping times, networks per band, interface
    counters, the uploaded log's key, size and sha256).
    """

    command_id: CommandId
    status: CommandStatus
    output: CommandOutput = Field(default_factory=dict)
    error: ShortText | None = None


DeviceMessage = PresenceMessage | StateMessage | JobStatusMessage | CommandResultMessage
BackendMessage = ConfigMessage | JobCommand | CommandRequest

MODELS: dict[Channel, type[DeviceMessage | BackendMessage]] = {
    Channel.PRESENCE: PresenceMessage,
    Channel.STATE: StateMessage,
    Channel.CONFIG: ConfigMessage,
    Channel.JOB: JobCommand,
    Channel.JOB_STATUS: JobStatusMessage,
    Channel.COMMAND: CommandRequest,
    Channel.COMMAND_RESULT: CommandResultMessage,
}
"""The payload model of every channel."""


class RejectReason(StrEnum):
    """Why a message was refused; used as a metric label, so keep it closed."""

    TOPIC = "bad_topic"
    NOT_FROM_DEVICE = "wrong_direction"  # also: a device-sent channel given to a device
    TOO_LARGE = "too_large"
    JSON = "invalid_json"
    SCHEMA = "schema"
    ID_MISMATCH = "id_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_JOB = "unknown_job"  # a job status for an execution the scheduler never made
    UNKNOWN_COMMAND = "unknown_command"  # a result for no command of this device
    EXPIRED_COMMAND = "expired_command"  # a result that came after the command's deadline
    RETAINED = "retained"  # a retained result (never sent by a well-behaved device)
    STORE_REFUSED = "store_refused"  # the database refused this one write for good


class Rejected(SchemaError):
    """A device message that cannot be accepted, with a closed reason and a detail."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def _schema_detail(exc: ValidationError, limit: int = 5) -> str:
    errors = exc.errors()
    parts = []
    for error in errors[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg']}")
    if len(errors) > limit:
        parts.append(f"(+{len(errors) - limit} more)")
    return "; ".join(parts)[:2000]


def _parse_topic(topic: str, from_device: bool) -> Topic:
    try:
        where = parse(topic)
    except TopicError as exc:
        raise Rejected(RejectReason.TOPIC, str(exc)) from None
    if where.channel.from_device != from_device:
        sender = "a device" if where.channel.from_device else "the backend"
        raise Rejected(RejectReason.NOT_FROM_DEVICE, f"{where.channel} is sent by {sender}")
    return where


def _decode(where: Topic, payload: bytes) -> DeviceMessage | BackendMessage:
    """Size limit, JSON object, then the channel's model; :class:`Rejected` otherwise."""
    limit = MAX_PAYLOAD_BYTES[where.channel]
    if len(payload) > limit:
        raise Rejected(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {limit}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise Rejected(RejectReason.JSON, str(exc)[:200]) from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise Rejected(RejectReason.SCHEMA, f"payload must be a JSON object, got {kind}")
    try:
        return MODELS[where.channel].model_validate(data)
    except ValidationError as exc:
        raise Rejected(RejectReason.SCHEMA, _schema_detail(exc)) from None


def _check_ids(where: Topic, device_id: str | None, job_id: str | None) -> None:
    if device_id is not None and device_id != where.device_id:
        raise Rejected(
            RejectReason.ID_MISMATCH, f"topic says {where.device_id!r}, payload says {device_id!r}"
        )
    if job_id is not None and job_id != where.job_id:
        raise Rejected(
            RejectReason.ID_MISMATCH, f"topic job {where.job_id!r}, payload job {job_id!r}"
        )


def parse_device_message(topic: str, payload: bytes) -> tuple[Topic, DeviceMessage]:
    """Validate one message a device sent; raise :class:`Rejected` with the reason."""
    where = _parse_topic(topic, from_device=True)
    message = _decode(where, payload)
    assert isinstance(
        message, PresenceMessage | StateMessage | JobStatusMessage | CommandResultMessage
    )
    job_id = _id_of(message)
    _check_ids(where, message.device_id, job_id)
    return where, message


def parse_backend_message(topic: str, payload: bytes) -> tuple[Topic, BackendMessage]:
    """Validate one message the backend sent to a device (the device side of the wire)."""
    where = _parse_topic(topic, from_device=False)
    message = _decode(where, payload)
    assert isinstance(message, ConfigMessage | JobCommand | CommandRequest)
    _check_ids(where, None, _id_of(message))
    return where, message


def _id_of(message: DeviceMessage | BackendMessage) -> str | None:
    """The job or command id a message names (None for the other channels)."""
    if isinstance(message, JobStatusMessage | JobCommand):
        return message.job_id
    if isinstance(message, CommandRequest | CommandResultMessage):
        return message.command_id
    return None


def encode(message: BaseModel) -> bytes:
    """The wire form of a payload: compact JSON, UTF-8."""
    return message.model_dump_json(exclude_none=True).encode()


def utc_now() -> datetime:
    return datetime.now(UTC)
