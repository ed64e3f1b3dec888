"""``OUTPOST_API_*``: limits of the REST facade (connections come from outpost.settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from outpost.settings import OutpostSettings
from outpost.signing import SigningKey


class ApiSettings(OutpostSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_API_")
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest JSON request body"
    )
    max_firmware_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="Largest firmware image"
    )
    upload_part_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        description="S3 multipart part size (S3 minimum 5 MiB)",
    )
    config_history: int = Field(
        default=20, ge=2, le=1000, description="Config versions kept per device"
    )
    broker_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="Longest wait for the broker (publish, admin)"
    )
    broker_accounts: Literal["dynsec", "external"] = Field(
        default="dynsec",
        description="Who keeps device accounts at the broker: dynsec (the api, through "
        "Mosquitto's dynamic-security $CONTROL API) or external (the broker's operator; "
        "the api creates, rotates and deletes nothing there)",
    )
    firmware_signing_key: SecretStr | None = Field(
        default=None,
        description="Ed25519 private key (base64 of its 32-byte seed) that signs firmware "
        "manifests at upload; unset: uploads are refused",
    )

    @field_validator("firmware_signing_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            SigningKey(value.get_secret_value())  # raises ValueError with the reason
        return value

    def signer(self) -> SigningKey | None:
        key = self.firmware_signing_key
        return SigningKey(key.get_secret_value()) if key is not None else None

    mongo_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Longest wait for one database round trip in a request: a database "
        "that hangs gets the request a 503 naming it after this long",
    )
    device_broker_url: str | None = Field(
        default=None,
        max_length=300,
        pattern=r"^mqtts?://[^\s]+$",
        description="The broker as devices reach it (mqtt:// or mqtts://), told to "
        "provisioned devices; unset: they keep the one they provisioned through",
    )
    provision_workers: int = Field(
        default=8, ge=1, le=256, description="Provisioning requests answered at once"
    )
    provision_claim_rate: float = Field(
        default=20.0, gt=0, description="Provisioning requests a second per claim (sustained)"
    )
    provision_claim_burst: int = Field(
        default=200, ge=1, description="Provisioning requests per claim allowed in a burst"
    )
    provision_serial_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds per provisioning request of one serial (sustained), after "
        "a burst of OUTPOST_API_PROVISION_SERIAL_BURST",
    )
    provision_serial_burst: int = Field(
        default=3, ge=1, description="Provisioning requests of one serial allowed in a burst"
    )
    provision_share_group: str = Field(
        default="outpost-api",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Shared-subscription group the api instances split provisioning "
        "requests in (one per deployment: instances of two deployments on one broker "
        "must differ)",
    )
