"""Request and response bodies: Create / Update / Public splits, frozen, extra forbidden."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.auth import Role
from api.sync import SyncReason
from schemas.topics import DEVICE_ID_PATTERN

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:=-]{0,63}$")]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
SemVer = Annotated[
    str,
    StringConstraints(
        pattern=r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
        r"(-[0-9A-Za-z.-]{1,40})?(\+[0-9A-Za-z.-]{1,40})?$",
        max_length=64,
    ),
]
ConfigObject = Annotated[dict[str, Any], Field(description="WiFi config (JSON object)")]

T = TypeVar("T")


class _In(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    role: Role


class TokenPublic(_Out):
    token_id: str
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None = None


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
    id: DeviceId
    hardware_model: Name
    group: Name | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    overrides: ConfigObject = Field(default_factory=dict)


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
    overrides: ConfigObject


class Rollback(_In):
    version: int = Field(ge=1)


class DeviceConfigPublic(_Out):
    device_id: str
    version: int
    hash: str
    config: dict[str, Any]
    created_at: datetime
    actor: str
    cause: str


class ConfigChange(_Out):
    changed: bool
    version: int | None
    published: bool


class GroupCreate(_In):
    name: Name
    template: ConfigObject = Field(default_factory=dict)


class TemplateUpdate(_In):
    template: ConfigObject


class GroupPublic(_Out):
    name: str
    template: dict[str, Any]
    version: int
    updated_at: datetime


class GroupChange(_Out):
    group: GroupPublic
    devices_changed: int
    devices_published: int


# -- firmware ----------------------------------------------------------------------------


class FirmwareCreate(_In):
    version: SemVer
    hardware_models: list[Name] = Field(min_length=1, max_length=32)
    release_notes: Annotated[str, StringConstraints(max_length=20_000)] = ""


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
