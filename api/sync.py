"""Is a device running its desired config, and if not, why. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.documents import DeviceDoc, DeviceStatusDoc


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


def sync_state(device: DeviceDoc, status: DeviceStatusDoc | None, online: bool) -> SyncState:
    """Compare the desired pointer (api) with the config the device reported (bridge).

    ``online``: whether the device's presence (``device_presence``, a document apart from
    ``status``) is vouched for as online.
    """
    desired = device.desired_config.version if device.desired_config else None
    state = status.state if status else None
    report = state.config if state else None
    reported = report.version if report else None
    applied = reported if report and report.status == "applied" else None
    if desired is None:
        return SyncState(SyncReason.NO_CONFIG, None, applied)
    if report is not None and reported == desired and report.status == "applied":
        return SyncState(SyncReason.IN_SYNC, desired, applied)
    if report is not None and reported == desired and report.status == "rejected":
        return SyncState(SyncReason.REJECTED, desired, applied, report.error)
    return SyncState(SyncReason.NOT_ACKED if online else SyncReason.OFFLINE, desired, applied)
