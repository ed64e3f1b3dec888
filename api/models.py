"""Request and response bodies: Create / Update / Public splits, frozen, extra forbidden."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from api.auth import Role
from api.sync import SyncReason
from schemas.provisioning import SERIAL_PATTERN
from schemas.topics import DEVICE_ID_PATTERN
from schemas.wifi import WifiConfigPatch, WifiConfigPatchPublic, WifiConfigPublic

# Text without control characters (PostgreSQL, under FerretDB, cannot store NUL; none
# of these fields needs a control character)
PLAIN = r"^[^\x00-\x1f\x7f]*$"
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
Serial = Annotated[str, StringConstraints(pattern=SERIAL_PATTERN)]
SemVer = Annotated[
    str,
    StringConstraints(
        pattern=r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
        r"(-[0-9A-Za-z.-]{1,40})?(\+[0-9A-Za-z.-]{1,40})?$",
        max_length=64,
    ),
]
# Every integer an admin sends that reaches the database fits in a signed 64-bit integer
# (what MongoDB and FerretDB store); versions stay far below it.
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]

T = TypeVar("T")


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _example(value: dict[str, Any]) -> ConfigDict:
    """A request body's example: shown in /docs, and tried first by schemathesis."""
    return ConfigDict(frozen=True, extra="forbid", json_schema_extra={"examples": [value]})


_TEMPLATE = {
    "country": "DE",
    "radios": {"2.4GHz": {"channel": 6}, "5GHz": {"channel": 36, "width": 80}},
    "ssids": [
        {
            "name": "Lobby",
            "security": {"mode": "wpa2-psk", "passphrase": "welcome-guest-2026"},
            "bands": ["2.4GHz", "5GHz"],
        }
    ],
}


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class PageOf(_Out, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null at end")


# -- tenants and tokens ------------------------------------------------------------------


class TenantPublic(_Out):
    id: str
    name: str
    created_at: datetime


class TokenCreate(_In):
    model_config = _example({"name": "ci-pipeline", "role": "operator"})

    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=PLAIN)]
    role: Role
    expires_at: AwareDatetime | None = Field(
        default=None, description="The token stops working then; null: no expiry"
    )


class TokenPublic(_Out):
    token_id: str
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = Field(
        default=None, description="Last authenticated request (updated at most once a minute)"
    )


class TokenCreated(TokenPublic):
    token: str = Field(description="The bearer token; shown only in this response")


# -- audit -------------------------------------------------------------------------------


class AuditEntry(_Out):
    id: str
    actor: str
    role: str
    action: str
    target: str
    at: datetime
    before: str | None = Field(default=None, description="JSON summary, truncated")
    after: str | None = Field(default=None, description="JSON summary, truncated")


# -- devices -----------------------------------------------------------------------------


class DeviceCreate(_In):
    model_config = _example(
        {"id": "ap-lobby-0042", "hardware_model": "ap-1", "tags": ["lobby"], "overrides": _TEMPLATE}
    )

    id: DeviceId
    hardware_model: Name
    group: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    overrides: WifiConfigPatch = Field(
        default_factory=WifiConfigPatch, description="Merged over the group's template"
    )


class DeviceUpdate(_In):
    group: Name | None = Field(default=None, description="Set a group; see clear_group")
    clear_group: bool = False
    tags: list[Tag] | None = Field(default=None, max_length=32)


class ConfigPointer(_Out):
    version: int
    hash: str
    updated_at: datetime


class SyncPublic(_Out):
    in_sync: bool
    reason: SyncReason
    desired_version: int | None
    applied_version: int | None
    error: str | None = None


class DevicePublic(_Out):
    id: str
    hardware_model: str
    group: str | None
    tags: list[str]
    created_at: datetime
    decommissioned_at: datetime | None = None
    presence: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    last_seen: datetime | None = None
    desired_config: ConfigPointer | None = None
    sync: SyncPublic


class DeviceCredentials(_Out):
    device_id: str
    username: str
    client_id: str
    password: str = Field(description="MQTT password; shown only in this response")
    firmware_public_key: str | None = Field(
        default=None,
        description="Ed25519 public key (base64) the device verifies firmware manifests with",
    )


class KeysReset(_Out):
    device_id: str
    key_epoch: int = Field(description="The device's ordering keys count from this epoch on")


class DeviceRegistered(_Out):
    device: DevicePublic
    credentials: DeviceCredentials


# -- config ------------------------------------------------------------------------------


class OverridesUpdate(_In):
    model_config = _example({"overrides": {"radios": {"5GHz": {"channel": 44}}}})

    overrides: WifiConfigPatch


class Rollback(_In):
    version: Version


class DeviceConfigPublic(_Out):
    """A device's desired config; version 0 (``config`` null): nothing desired yet."""

    device_id: str
    version: int = Field(ge=0)
    hash: str | None
    config: WifiConfigPublic | None = Field(description="Secrets shown as set / not set")
    created_at: datetime | None
    actor: str | None
    cause: str | None


class ConfigChange(_Out):
    changed: bool
    version: int | None
    published: bool


class GroupCreate(_In):
    model_config = _example({"name": "lobby", "template": _TEMPLATE})

    name: Name
    template: WifiConfigPatch = Field(default_factory=WifiConfigPatch)


class TemplateUpdate(_In):
    model_config = _example({"template": _TEMPLATE})

    template: WifiConfigPatch


class GroupPublic(_Out):
    name: str
    template: WifiConfigPatchPublic = Field(description="Secrets shown as set / not set")
    version: int
    updated_at: datetime


class GroupChange(_Out):
    group: GroupPublic
    devices_changed: int
    devices_published: int


# -- firmware ----------------------------------------------------------------------------


class FirmwareCreate(_In):
    model_config = _example(
        {"version": "2.4.1", "hardware_models": ["ap-1"], "release_notes": "Fixes roaming"}
    )

    version: SemVer
    hardware_models: list[Name] = Field(min_length=1, max_length=32)
    release_notes: Annotated[str, StringConstraints(max_length=20_000, pattern=r"^[^\x00]*$")] = ""


class FirmwarePublic(_Out):
    id: str
    version: str
    hardware_models: list[str]
    release_notes: str
    status: str = Field(description="pending until the image is uploaded, then ready")
    size: int | None
    sha256: str | None
    signature: str | None = Field(
        default=None,
        description="Ed25519 signature (base64) of the manifest: version, size, sha256, "
        "hardware models; devices verify it with firmware_public_key",
    )
    created_at: datetime
    uploaded_at: datetime | None


# -- provisioning claims -----------------------------------------------------------------


class ClaimCreate(_In):
    model_config = _example(
        {
            "name": "batch-2026-11",
            "allow": ["SN-000042", "aa:bb:cc:00:00:42"],
            "device_limit": 100,
            "group": "lobby",
            "tags": ["site:berlin"],
        }
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=PLAIN)]
    allow: list[Serial] | None = Field(
        default=None,
        max_length=10_000,
        description="Serial numbers or MAC addresses that may provision; null: any",
    )
    expires_at: AwareDatetime | None = Field(default=None, description="null: no expiry")
    device_limit: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Most devices; null: no limit"
    )
    group: Name | None = Field(default=None, description="The group new devices join")
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class ClaimPublic(_Out):
    id: str
    name: str
    username: str = Field(description="The claim's broker account (the secret is its password)")
    allow: list[str] | None
    expires_at: datetime | None
    device_limit: int | None
    devices: int = Field(description="Devices provisioned through it so far")
    group: str | None
    tags: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ClaimCreated(ClaimPublic):
    secret: str = Field(description="The claim secret devices are shipped with; shown once")


class ProvisioningReset(_Out):
    device_id: str
    serial: str


# -- device commands ---------------------------------------------------------------------

CommandNameIn = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
ArgKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ArgText = Annotated[str, StringConstraints(max_length=1024, pattern=PLAIN)]
ArgValue = bool | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | float | ArgText
ExpiresIn = Annotated[
    int,
    Field(
        ge=2,
        le=7 * 24 * 3600,
        description="Seconds until the command expires: not delivered, not run and its "
        "result not kept after that",
    ),
]


class CommandCreate(_In):
    model_config = _example({"name": "ping", "args": {"target": "192.168.1.1", "count": 3}})

    name: CommandNameIn = Field(
        description="reboot, ping, scan, counters or logs; any other name is sent as it is "
        "and a device that does not know it answers status unknown"
    )
    args: dict[ArgKey, ArgValue] = Field(default_factory=dict, max_length=16)
    expires_in_s: ExpiresIn = 300


class CommandTarget(_In):
    """Which devices: every given criterion must hold (tags: all of them)."""

    group: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=16)
    device_ids: list[DeviceId] = Field(default_factory=list, max_length=10_000)


class BulkCommandCreate(CommandCreate):
    model_config = _example({"name": "reboot", "target": {"group": "lobby"}, "max_per_minute": 60})

    target: CommandTarget
    max_per_minute: int = Field(
        default=60, ge=1, le=100_000, description="Devices sent the command per minute at most"
    )


class CommandResultPublic(_Out):
    status: str
    output: dict[str, Any]
    error: str | None
    received_at: datetime


class LogDownload(_Out):
    key: str
    size: int
    sha256: str
    url: str = Field(description="Presigned GET, short-lived")
    url_expires_at: datetime


class CommandPublic(_Out):
    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    status: str = Field(
        description="queued (a group command waiting for its turn), sent, expired, "
        "undeliverable, or the device's answer: succeeded, failed, rejected, unknown"
    )
    created_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    bulk_id: str | None
    result: CommandResultPublic | None
    log: LogDownload | None = None


class BulkCommandPublic(_Out):
    id: str
    name: str
    args: dict[str, Any]
    devices: int
    max_per_minute: int
    created_at: datetime
    expires_at: datetime
    statuses: dict[str, int] = Field(description="Commands per status")
