"""The bridge's exceptions: library errors (paho, pymongo) become these at the edge.

BridgeError
├── MqttError      the broker refused or dropped us (connect, subscribe)
├── StoreUnavailable  MongoDB is unreachable or timed out: retry later
└── StoreError     MongoDB failed in a way a retry will not fix
"""

from __future__ import annotations

__all__ = ["BridgeError", "MqttError", "StoreError", "StoreUnavailable"]


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class MqttError(BridgeError):
    """The broker refused a connect or a subscription, or could not be reached."""


class StoreError(BridgeError):
    """A MongoDB error that is not transient (bad credentials, a bug in an update)."""


class StoreUnavailable(BridgeError):
    """MongoDB is unreachable, failing over or timed out: the same write may succeed later."""
