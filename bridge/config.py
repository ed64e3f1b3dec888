"""Bridge settings: ``OUTPOST_BRIDGE_*`` (broker, MongoDB and HTTP come from outpost.settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from outpost.settings import OutpostSettings

__all__ = ["BridgeSettings"]


class BridgeSettings(OutpostSettings):
    """How one bridge instance consumes and writes.

    ``instance`` makes the MQTT client id (``<prefix>-bridge-<instance>``): it must be
    stable across restarts of one instance (its persistent session holds the messages
    not yet acknowledged) and distinct between instances.
    """

    model_config = SettingsConfigDict(env_prefix="OUTPOST_BRIDGE_")
    instance: str = Field(
        default="0",
        pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="This instance's name: stable across its restarts, distinct between instances",
    )
    share_group: str = Field(
        default="outpost-bridge",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Shared-subscription group the instances split the messages in",
    )
    intake: Literal["process", "inline"] = Field(
        default="process",
        description="Where the MQTT client reads and parses packets: 'process', a child "
        "process (bridge/mqtt_process.py), so reading never delays the database writes; "
        "'inline', on the bridge's own event loop (one process)",
    )
    batch_max: int = Field(
        default=20_000,
        ge=1,
        le=65_535,
        description="Most messages per batch. A batch takes what has queued up while the "
        "previous one was written, so it only grows when the database is the "
        "bottleneck; then a device's repeated messages coalesce into one update. "
        "Keep it at receive_maximum so one batch can hold the whole backlog.",
    )
    flush_ms: float = Field(
        default=5.0,
        ge=0,
        le=10_000,
        description="A batch is closed once no message came for this long",
    )
    gather_ms: float = Field(
        default=500.0,
        ge=0,
        le=60_000,
        description="Longest a batch keeps taking messages that keep coming (a burst)",
    )
    receive_maximum: int = Field(
        default=20_000,
        ge=1,
        le=65_535,
        description="Unacknowledged messages the broker may send us",
    )
    session_expiry_s: int = Field(
        default=6 * 3600, ge=0, description="How long the broker keeps our session while away"
    )
    stop_timeout_s: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="After SIGTERM, how long the batch being written may still take "
        "(MongoDB away, or FerretDB slow on a large batch). Past it the bridge "
        "leaves without acknowledging that batch: nothing is lost, the broker "
        "redelivers it when this instance reconnects. Keep it below the "
        "orchestrator's grace period.",
    )
    dead_letter_cap: int = Field(
        default=100, ge=1, le=100_000, description="Samples kept per reject reason"
    )
    state_refresh_s: float = Field(
        default=300.0,
        ge=1,
        le=86_400,
        description="A device repeating an identical state is written again at most once "
        "per this many seconds, so last_seen and uptime stay fresh; a silent device costs "
        "nothing",
    )
    unknown_ttl_s: float = Field(
        default=5.0,
        ge=0,
        description="How long an id without a devices document is remembered as unknown",
    )
    known_ttl_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a registered device's facts are cached: a reset of its "
        "ordering keys takes effect within this time",
    )
