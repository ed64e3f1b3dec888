"""Turn an :class:`Inbound` into an accepted device message or a rejection (pure)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from bridge.inbound import Inbound
from schemas.protocol import (
    DeviceMessage,
    Rejected,
    RejectReason,
    StateMessage,
    parse_device_message,
)
from schemas.topics import Channel, Topic

__all__ = ["Accepted", "Rejection", "content_hash", "decode", "slot"]

Slot = tuple[str, Channel, str | None]


@dataclass(frozen=True, slots=True)
class Accepted:
    inbound: Inbound
    where: Topic
    message: DeviceMessage
    epoch: int = 0  # the device's key epoch (registry), known once the device is looked up
    h: str | None = None  # a state's content hash (:func:`content_hash`), taken once here

    @property
    def device_id(self) -> str:
        return self.where.device_id


@dataclass(frozen=True, slots=True)
class Rejection:
    inbound: Inbound
    reason: RejectReason
    detail: str


def decode(inbound: Inbound) -> Accepted | Rejection:
    """Validate topic and payload; never raises on input."""
    try:
        where, message = parse_device_message(inbound.topic, inbound.payload)
    except Rejected as exc:
        return Rejection(inbound, exc.reason, exc.detail)
    h = content_hash(message) if isinstance(message, StateMessage) else None
    return Accepted(inbound, where, message, h=h)


def content_hash(message: StateMessage) -> str:
    """Short hash of what a state says (not when): equal hash = nothing changed.

    Taken once per message, at decode (the decoder runs while the previous batch is
    written): a batch needs it to skip, to condition and to store each state, and at
    ~20 µs a hash, taking it each time cost more than the rest of the batch's planning.
    """
    canonical = json.dumps(message.content(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


def slot(accepted: Accepted) -> Slot:
    """What one ordering key orders: a device's channel (and job, for job status)."""
    return (accepted.where.device_id, accepted.where.channel, accepted.where.job_id)
