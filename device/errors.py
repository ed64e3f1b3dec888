"""Exceptions of the device package, one tree under :class:`DeviceError`.

DeviceError
├── StateFileError      the agent's state file cannot be read or written
├── DownloadError       a firmware image could not be fetched (HTTP, network)
├── DiagnosticsError    a command's diagnostic failed (ping, counters, log upload)
└── BrokerError         the broker refused or dropped the connection
"""

from __future__ import annotations

__all__ = ["BrokerError", "DeviceError", "DiagnosticsError", "DownloadError", "StateFileError"]


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
