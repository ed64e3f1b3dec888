"""``OUTPOST_SCHEDULER_*`` settings: tick and lease timing, batch size, instance name."""

from __future__ import annotations

import os
import secrets
import socket
from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from outpost.settings import DEV_ENV_FILE
from scheduler.executor import ExecutorConfig
from scheduler.reconcile import ReconcilePolicy

__all__ = ["SchedulerSettings"]


def _default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class SchedulerSettings(BaseSettings):
    """Timing of the scheduler. Takeover after a crash takes at most
    ``lease_seconds + tick_seconds``; a command whose sender died is re-sent after
    ``settle_seconds`` unless the device reported on it."""

    model_config = SettingsConfigDict(
        env_prefix="OUTPOST_SCHEDULER_",
        env_file=(DEV_ENV_FILE, ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
    )

    instance: str = Field(default_factory=_default_instance, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    tick_seconds: float = Field(default=5.0, gt=0, le=300)
    lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    lease_margin_seconds: float = Field(default=5.0, ge=0)
    settle_seconds: float = Field(default=15.0, ge=0.5, le=3600)
    batch: int = Field(default=64, ge=1, le=10_000)
    min_url_seconds: int = Field(default=60, ge=1)
    snapshot_seconds: float = Field(default=60.0, ge=1, description="$SYS snapshot period")
    notify_seconds: float = Field(default=60.0, ge=0.5, description="Notification period")
    reconcile_seconds: float = Field(default=60.0, ge=0.5, description="Config reconcile period")
    reconcile_lag_seconds: float = Field(default=300.0, ge=0)
    reconcile_retry_seconds: float = Field(default=300.0, ge=0)
    reconcile_max_attempts: int = Field(default=5, ge=1, le=100)

    def reconcile(self) -> ReconcilePolicy:
        return ReconcilePolicy(
            lag=timedelta(seconds=self.reconcile_lag_seconds),
            retry_after=timedelta(seconds=self.reconcile_retry_seconds),
            max_attempts=self.reconcile_max_attempts,
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
