"""``OUTPOST_SIM_*``: where the simulated fleet connects, as devices (not as the backend).

The backend's own broker settings (``OUTPOST_MQTT_*``) are a backend account on the
backend's listener; devices may reach the broker another way (a TLS listener, another
address), so the simulator has settings of its own.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from outpost.settings import MqttUrl, OutpostSettings

__all__ = ["SimSettings"]


class SimSettings(OutpostSettings):
    """Where ``outpost sim`` connects its devices."""

    model_config = SettingsConfigDict(env_prefix="OUTPOST_SIM_")

    broker_url: MqttUrl = Field(description="Broker as devices reach it: mqtt:// or mqtts://")
    ca_file: str | None = Field(default=None, description="CA bundle devices trust for mqtts")
    username: str | None = Field(default=None, description="Account the devices use")
    password: SecretStr | None = Field(default=None, description="Its password")
