"""``OUTPOST_SCHEDULER_*`` settings: tick and lease timing, batch size, instance name."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from outpost.settings import OutpostSettings
from scheduler.commands import CommandConfig
from scheduler.executor import ExecutorConfig
from scheduler.reconcile import ReconcilePolicy

__all__ = ["SchedulerSettings"]


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class SchedulerSettings(OutpostSettings):
    """Timing of the scheduler. Takeover after a crash takes at most
    ``lease_seconds + tick_seconds``; a command whose sender died is re-sent after
    ``settle_seconds`` unless the device reported on it."""

    model_config = SettingsConfigDict(env_prefix="OUTPOST_SCHEDULER_")
    instance: str = Field(
        default_factory=_default_instance,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="This instance's name (default: host, pid and a random suffix)",
    )
    tick_seconds: float = Field(default=5.0, gt=0, le=300, description="Rollout tick period")
    lease_seconds: float = Field(
        default=30.0, ge=1, le=3600, description="Rollout lease time (takeover after a crash)"
    )
    lease_margin_seconds: float = Field(
        default=5.0, ge=0, description="A holder stops acting this long before its lease ends"
    )
    settle_seconds: float = Field(
        default=15.0, ge=0.5, le=3600, description="When an unconfirmed command is re-sent"
    )
    batch: int = Field(default=64, ge=1, le=10_000, description="Commands claimed per batch")
    min_url_seconds: int = Field(
        default=60, ge=1, description="Send nothing when less window than this is left"
    )
    command_tick_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Group device command tick: how often due commands are sent (they are "
        "paced evenly within each bulk's per-minute cap)",
    )
    snapshot_seconds: float = Field(default=60.0, ge=1, description="$SYS snapshot period")
    notify_seconds: float = Field(default=60.0, ge=0.5, description="Notification period")
    reconcile_seconds: float = Field(default=60.0, ge=0.5, description="Config reconcile period")
    fleet_seconds: float = Field(
        default=30.0,
        ge=0.5,
        le=3600,
        description="Fleet gauges period: one instance reads the database once per period, "
        "every instance exports the result",
    )
    reconcile_lag_seconds: float = Field(
        default=300.0, ge=0, description="A config unacknowledged this long is re-published"
    )
    reconcile_retry_seconds: float = Field(
        default=300.0, ge=0, description="First wait between re-publishes (doubles)"
    )
    reconcile_max_attempts: int = Field(
        default=5, ge=1, le=100, description="Re-publishes of one config version at most"
    )

    def reconcile(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            lag=timedelta(seconds=self.reconcile_lag_seconds),
            retry_after=timedelta(seconds=self.reconcile_retry_seconds),
            max_attempts=self.reconcile_max_attempts,
        )

    def commands(self) -> CommandConfig:
        return CommandConfig(
            lease_ttl=timedelta(seconds=self.lease_seconds),
            lease_margin=timedelta(seconds=min(self.lease_margin_seconds, self.lease_seconds / 3)),
            batch=self.batch,
            settle=timedelta(seconds=self.settle_seconds),
        )

    def executor(self, presign_seconds: int) -> ExecutorConfig:
        return ExecutorConfig(
            lease_ttl=timedelta(seconds=self.lease_seconds),
            lease_margin=timedelta(seconds=min(self.lease_margin_seconds, self.lease_seconds / 3)),
            batch=self.batch,
            settle=timedelta(seconds=self.settle_seconds),
            presign_seconds=presign_seconds,
            min_url_seconds=self.min_url_seconds,
        )
