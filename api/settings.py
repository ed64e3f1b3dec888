"""``OUTPOST_API_*``: limits of the REST facade (connections come from outpost.settings)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from outpost.settings import OutpostSettings


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
    mongo_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Longest wait for one database round trip in a request: a database "
        "that hangs gets the request a 503 naming it after this long",
    )
