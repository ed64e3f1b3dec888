"""Turn an :class:`Inbound` into an accepted device message or a rejection (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.inbound import Inbound
from schemas.protocol import DeviceMessage, Rejected, RejectReason, parse_device_message
from schemas.topics import Channel, Topic

__all__ = ["Accepted", "Rejection", "decode", "slot"]

Slot = tuple[str, Channel, str | None]


@dataclass(frozen=True, slots=True)
class Accepted:
    inbound: Inbound
    where: Topic
    message: DeviceMessage
    epoch: int = 0  # the device's key epoch (registry), known once the device is looked up

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
    return Accepted(inbound, where, message)


def slot(accepted: Accepted) -> Slot:
    """What one ordering key orders: a device's channel (and job, for job status)."""
    return (accepted.where.device_id, accepted.where.channel, accepted.where.job_id)
