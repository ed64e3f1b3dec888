"""What the transport hands to the bridge: received MQTT messages, immutable, and a way
to acknowledge them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["Inbound", "Source"]


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


class Source(Protocol):
    """Where the bridge takes messages from and acknowledges them: the MQTT transport,
    on the event loop (:class:`bridge.mqtt_source.MqttSource`) or in a child process
    (:class:`bridge.mqtt_process.ProcessSource`)."""

    client_id: str
    connected: bool
    messages: asyncio.Queue[Inbound | None]
    """Messages in the order received; ``None`` means no more (after :meth:`close_intake`)."""
    on_connected: Callable[[bool, int, datetime | None], None] | None
    """Called at each CONNACK: session present, generation, when the last one was lost."""

    def ack(self, inbound: Inbound) -> bool:
        """Acknowledge one message; False if it came on an earlier connection."""
        ...

    def close_intake(self) -> None:
        """Stop taking messages and put the end marker on :attr:`messages`."""
        ...
