"""Is a device running its desired config, and if not, why. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class SyncReason(StrEnum):
    IN_SYNC = "in_sync"
    NO_CONFIG = "no_config"  # nothing desired yet
    REJECTED = "rejected"  # the device refused the desired version
    OFFLINE = "offline"  # not acked, and the device is offline
    NOT_ACKED = "not_acked"  # online, has not reported the desired version yet


@dataclass(frozen=True, slots=True)
class SyncState:
    reason: SyncReason
    desired_version: int | None
    applied_version: int | None
    error: str | None = None

    @property
    def in_sync(self) -> bool:
        return self.reason in (SyncReason.IN_SYNC, SyncReason.NO_CONFIG)


def sync_state(device: dict[str, Any]) -> SyncState:
    desired = (device.get("desired_config") or {}).get("version")
    report = ((device.get("state") or {}).get("config")) or {}
    reported = report.get("version")
    applied = reported if report.get("status") == "applied" else None
    if desired is None:
        return SyncState(SyncReason.NO_CONFIG, None, applied)
    if reported == desired and report.get("status") == "applied":
        return SyncState(SyncReason.IN_SYNC, desired, applied)
    if reported == desired and report.get("status") == "rejected":
        return SyncState(SyncReason.REJECTED, desired, applied, report.get("error"))
    online = (device.get("presence") or {}).get("status") == "online"
    return SyncState(SyncReason.NOT_ACKED if online else SyncReason.OFFLINE, desired, applied)
