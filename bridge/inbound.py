"""What the transport hands to the bridge: one received MQTT message, immutable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Inbound"]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message as received. ``mid``/``qos``/``generation`` are what acknowledging needs.

    ``generation`` counts the connections of the source: a message received on an earlier
    connection is not acknowledged (the broker resends it on the resumed session, and that
    copy is acknowledged instead; acking the old packet id could ack a newer message).
    """

    topic: str
    payload: bytes
    mid: int
    qos: int
    retain: bool
    generation: int
    received_at: datetime  # wall clock (UTC), stored as ``since``/``updated_at``
    received_mono: float  # monotonic, for the receive-to-ack delay metric
