"""Exceptions of the device package, one tree under :class:`DeviceError`.

DeviceError
├── StateFileError      the agent's state file cannot be read or written
├── DownloadError       a firmware image could not be fetched (HTTP, network)
├── DiagnosticsError    a command's diagnostic failed (ping, counters, log upload)
├── BrokerError         the broker refused or dropped the connection
└── ProvisioningError   no identity from a claim: no answer, or an unreadable one
    └── Refused         the backend refused, with a reason (schemas.provisioning)
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "DeviceError",
    "DiagnosticsError",
    "DownloadError",
    "ProvisioningError",
    "Refused",
    "StateFileError",
]


class DeviceError(Exception):
    """Base of every error raised by the device agent and the simulator."""


class StateFileError(DeviceError):
    pass


class DownloadError(DeviceError):
    pass


class DiagnosticsError(DeviceError):
    pass


class BrokerError(DeviceError):
    pass


class ProvisioningError(DeviceError):
    pass


class Refused(ProvisioningError):
    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
