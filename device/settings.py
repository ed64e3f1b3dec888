"""``OUTPOST_SIM_*``: where the simulated fleet connects, as devices (not as the backend).

The backend's own broker settings (``OUTPOST_MQTT_*``) are a backend account on the
backend's listener; devices may reach the broker another way (a TLS listener, another
address), so the simulator has settings of its own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from outpost.settings import MqttUrl, OutpostSettings

__all__ = ["SimSettings"]


class SimSettings(OutpostSettings):
    """Where ``outpost sim`` connects its devices."""

    model_config = SettingsConfigDict(env_prefix="OUTPOST_SIM_")

    broker_url: MqttUrl = Field(description="Broker as devices reach it: mqtt:// or mqtts://")
    ca_file: str | None = Field(default=None, description="CA bundle devices trust for mqtts")
    accounts_file: Path | None = Field(
        default=None,
        description="JSON object of device id -> password: each listed device connects "
        "with its own account",
    )
    username: str | None = Field(
        default=None, description="Shared account for devices not in the accounts file"
    )
    password: SecretStr | None = Field(default=None, description="Its password")
    firmware_key: str | None = Field(
        default=None,
        description="The api's firmware signing public key: devices verify upgrade "
        "manifests with it (unset: they trust any job)",
    )
    claim: SecretStr | None = Field(
        default=None,
        description="A provisioning claim secret: devices start out of the box and "
        "provision their own accounts (as --claim)",
    )
